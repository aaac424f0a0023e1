// Package m365sim simulates the parts of Microsoft 365 broker talks to: the
// identity platform's v2.0 endpoints (Entra) and Exchange Online's IMAP
// and SMTP submission services. Tests use it, and so does `broker serve -dev`.
//
// Entra serves plain HTTP on a loopback port: the token endpoint with the
// client credentials, refresh token, device code and password grants, the
// device authorization endpoint with a small verification page, and the
// discovery document and keys. Access tokens are RS256 JWTs shaped like
// Entra's v1.0 tokens for Exchange; errors carry Entra's JSON and AADSTS
// codes. Failure injection (FailNext, SetFailure), Hold and a settable clock
// (EntraOptions.Now) make failure and concurrency tests deterministic.
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
package m365sim
