// Package m365sim simulates the parts of Microsoft 365 broker talks to: the
// identity platform's v2.0 endpoints (Entra), Exchange Online's IMAP and
// SMTP submission services, and Microsoft Graph's mail API. Tests use it,
// and so does `broker serve -dev`.
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
// Graph is Microsoft Graph's mail API over HTTPS (URL, CACertPEM), for
// tenants that keep SMTP AUTH off. Under /v1.0/users/{id} (or /me):
// sendMail (base64 MIME with Content-Type text/plain, or JSON; 202),
// messages (a draft from MIME or JSON; 201), PATCH, GET and DELETE of a
// message, attachments (a fileAttachment within the 4 MB request limit),
// attachments/createUploadSession (2 MiB to 150 MB) with its pre-
// authenticated uploadUrl taking PUTs of at most 4 MB in order (200, then
// 201 with Location), send (202), and mailFolders/sentitems/messages with
// $filter=internetMessageId eq '…'. Tokens are checked as Graph does:
// audience, Mail.Send (sending) or Mail.ReadWrite (drafts) as role or
// scope (.Shared scopes for another mailbox), an application access policy
// (SetAccessPolicy, by default the app's App.Mailboxes), send-as (From
// must be the mailbox, or one it or the user has SendAs on via
// AddDelegate). Errors carry Graph's JSON (error.code, message,
// innerError): InvalidAuthenticationToken, ErrorAccessDenied,
// ErrorSendAsDenied, ErrorInvalidUser, MailboxNotEnabledForRESTAPI
// (DisableREST), ErrorItemNotFound, ErrorMessageSizeExceeded, 413 above
// 4 MB, ErrorAttachmentSizeShouldNotBeLessThanMinimumSize, and 429
// ApplicationThrottled beyond 4 concurrent requests or 10,000 per ten
// minutes per app and mailbox. A MIME message goes to the To, Cc and Bcc
// of its header, as with Graph: an SMTP envelope is honoured only by
// setting a draft's recipients. Sent messages are recorded (Sent, with
// each attachment's SHA-256), delivered to an IMAP simulator's mailboxes
// (and the sender's Sent Items), and saved in Sent Items unless told
// otherwise. FailNext (429, 503, 504 with Retry-After), Hold and
// DropAfterAccept (the send happens, the response is lost) make failures
// deterministic; Requests and MaxConcurrent count.
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
