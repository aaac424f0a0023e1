// Package m365sim simulates the parts of Microsoft 365 broker talks to: the
// identity platform's v2.0 endpoints (Entra) and Exchange Online's IMAP
// service. Tests use it, and so does `broker serve -dev`.
package m365sim
