// Package proxy is the shared core of the protocol proxies, which accept
// legacy logins from local clients and relay their sessions to an upstream
// mail server: proxy/imap, proxy/smtp (and proxy/pop3 to come).
//
// It holds what they have in common: the Authenticator seam (it knows
// nothing of OAuth or of where credentials live: an Authenticator decides
// whether a login is good and says how to authenticate upstream), the
// connection core (Server: accept loop, caps, drain, per-mailbox upstream
// slots), the login pipeline (LoginUpstream), the SASL PLAIN and LOGIN
// servers, TLS configuration copies and shared defaults.
package proxy

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/emersion/go-sasl"
)

// Protocol names the client-facing protocol of a login.
type Protocol string

const (
	IMAP Protocol = "imap"
	SMTP Protocol = "smtp"
	POP3 Protocol = "pop3"
)

// Login is one local login attempt.
type Login struct {
	Protocol Protocol
	Username string
	Password string
	Remote   net.Addr
}

// Upstream says how to authenticate one upstream session.
type Upstream struct {
	// Account names the mailbox in logs.
	Account string
	// Via names the upstream service: ViaProtocol (the protocol's own
	// server) or ViaGraph.
	Via Via
	// SASL authenticates the upstream session (XOAUTH2). It is used once.
	// Set unless Via is ViaGraph.
	SASL sasl.Client
	// Bearer returns a current access token for Via's HTTP API; set when
	// Via is ViaGraph. It may wait for the token; its errors are
	// *LoginError as Authenticate's.
	Bearer func(ctx context.Context) (string, error)
	// BearerRejected, if set, is told that Via's API refused token, which
	// Bearer returned, as not valid (Graph's 401
	// InvalidAuthenticationToken): Bearer must not return it again, and
	// the next call gets a new one. The upstream calls it at most once per
	// message, then asks Bearer again and retries the request once.
	BearerRejected func(token string)
	// Expires is when the access token in SASL expires. An upstream
	// session kept for reuse after its client left is closed before
	// then. The zero value means unknown: the protocol then assumes a
	// short lifetime.
	Expires time.Time
}

// Via is the kind of upstream an account's session goes to.
type Via string

const (
	// ViaProtocol: the protocol's own upstream server, logged in to with
	// SASL (Exchange Online's IMAP, POP3 or SMTP AUTH).
	ViaProtocol Via = ""
	// ViaGraph: Microsoft Graph's mail API, for SMTP submission where the
	// tenant keeps SMTP AUTH disabled.
	ViaGraph Via = "graph"
)

// Authenticator checks a local login and returns how to log in upstream.
//
// A failed login should be a *LoginError; any other error is reported to
// the client as a temporary failure.
type Authenticator interface {
	Authenticate(ctx context.Context, login *Login) (*Upstream, error)
}

// AccountAuthenticator is an optional interface of an Authenticator: it
// returns upstream credentials for a configured account without a local
// password. The SMTP server uses it only for its UnauthenticatedAs option,
// and only for loopback clients. A failure is a *LoginError, as for
// Authenticate.
type AccountAuthenticator interface {
	AuthenticateAccount(ctx context.Context, protocol Protocol, account string) (*Upstream, error)
}

// UpstreamRejectionReporter is an optional interface of an Authenticator: it
// is told when upstream refused credentials the Authenticator handed out, so
// that it can mark the account or discard a token. When it returns true it
// has discarded a token it had believed valid, and the proxy asks it once
// more before failing the client.
type UpstreamRejectionReporter interface {
	UpstreamRejected(account string, detail string) (retry bool)
}

// ErrorKind classifies a failed login for the client's reply.
type ErrorKind int

const (
	// KindCredentials: unknown user or wrong password. The client gets the
	// same generic answer for both.
	KindCredentials ErrorKind = iota
	// KindAccount: the credentials are fine but the account needs an
	// administrator (consent missing, secret expired, mailbox not permitted).
	KindAccount
	// KindUnavailable: a temporary failure; the client should retry later.
	KindUnavailable
)

func (k ErrorKind) String() string {
	switch k {
	case KindCredentials:
		return "credentials"
	case KindAccount:
		return "account"
	case KindUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("ErrorKind(%d)", int(k))
}

// LoginError is a failed login. Reason is short and safe to show the client;
// Err carries the detail for the log and must not contain secrets either.
type LoginError struct {
	Kind   ErrorKind
	Reason string
	Err    error
}

func (e *LoginError) Error() string {
	msg := e.Kind.String() + ": " + e.Reason
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *LoginError) Unwrap() error { return e.Err }
