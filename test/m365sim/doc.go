// Package m365sim simulates the parts of Microsoft 365 broker talks to: the
// identity platform's v2.0 endpoints (Entra) and Exchange Online's IMAP
// and SMTP submission services. Tests use it, and so does `broker serve -dev`.
//
// Entra serves plain HTTP on a loopback port: the token endpoint with the
// client credentials, refresh token, authorization code, device code and
// password grants, the authorization endpoint with a small sign-in page, the
// device authorization endpoint with a small verification page, and the
// discovery document and keys. Access tokens are RS256 JWTs shaped like
// Entra's v1.0 tokens for Exchange; errors carry Entra's JSON and AADSTS
// codes. Failure injection (FailNext, SetFailure, and FailNextAt and
// SetFailureAt for the device code and authorization endpoints), Hold and
// a settable clock (EntraOptions.Now) make failure and concurrency tests
// deterministic.
//
// Delegated sign-in, as `broker login` does it:
//
//   - Authorization code with PKCE (S256 only). App.RedirectURIs are matched
//     as Entra does ("http://localhost" on any port). Authorize plays the
//     browser: it signs a user in for an authorization URL and returns the
//     URL the browser is sent back to, with code and state or with error and
//     error_description; AuthorizeDeny declines consent (AADSTS65004).
//     Errors Entra shows on its own page (AADSTS50011, 500113, 700016,
//     50053, 50057) are a *SignInError. A code is redeemed once (54005),
//     within ten minutes (70008), with the same redirect_uri (500112) and
//     the code_verifier (50148).
//   - Device code, polled with client authentication: without "Allow public
//     client flows" a secret or an assertion is required (7000218).
//   - Certificate credentials: App.Certificates, and client assertions
//     checked like Entra's (700027 key, signature or expiry of the
//     certificate; 700021 iss/sub; 700023 aud; 700024 nbf/exp; 50027
//     malformed or a replayed jti). NewClientCertificate makes one.
//   - Account state (UpdateUser): MFA required (50076 for the password
//     grant only), password expiry (50055, and pwd_exp/pwd_url in ID
//     tokens before it), disabled (50057), locked (50053), and a password
//     change that revokes refresh tokens (50173).
//   - Refresh tokens: per-resource tokens from one refresh token (Graph and
//     Outlook), RefreshTokenReuse counting redemptions of refresh tokens that
//     were no longer the newest, SetStrictRefreshRotation making them single
//     use (70008), ExpireRefreshTokens (700082) and RevokeSessions (50173).
//   - Shared mailboxes: AddDelegate lets a user's token open another
//     mailbox over IMAP and SMTP, as FullAccess and SendAs do in Exchange.
//
// IMAP serves implicit TLS and accepts only XOAUTH2 with tokens that Entra
// issued and Exchange would honour (audience, role or scope, FullAccess
// grant). Mailboxes are in memory and shared by all sessions of the same
// mailbox. Like Exchange, it ends a session when its token expires.
//
// SMTP is smtp.office365.com:587: STARTTLS (or implicit TLS, or a
// misconfigured plain-text upstream), AUTH XOAUTH2 with the same token
// checks (SMTP.SendAsApp or SMTP.Send), and Exchange's replies and limits:
// send-as (5.7.60), recipients (5.1.10, 4.5.3), SIZE (5.3.4), three
// sessions per mailbox (432 4.3.2), SMTP AUTH disabled (5.7.139). Accepted
// messages are recorded with their SHA-256 and queue ID, and delivered to
// an IMAP simulator's mailboxes. DropNextData and HoldNextData make
// failures in the middle of DATA deterministic.
//
// POP3 is outlook.office365.com:995 over an IMAP simulator's INBOXes:
// implicit TLS, Exchange's greeting and CAPA (TOP, UIDL, SASL PLAIN
// XOAUTH2, USER), AUTH XOAUTH2 with the same token checks
// (POP.AccessAsApp or POP.AccessAsUser.All), an error challenge before
// -ERR unless NoErrorChallenge, POP disabled per mailbox
// (SetPOPEnabled). The listing is fixed at login; RETR marks a message
// read, TOP does not; DELE takes effect only at QUIT, so a dropped
// connection deletes nothing.
package m365sim
