// Package proxy accepts legacy logins from local clients and relays their
// sessions to an upstream mail server. It knows nothing of OAuth or of where
// credentials live: an Authenticator decides whether a login is good and says
// how to authenticate upstream.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/emersion/go-sasl"
)

// Protocol names the client-facing protocol of a login.
type Protocol string

const (
	IMAP Protocol = "imap"
	SMTP Protocol = "smtp"
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
	// SASL authenticates the upstream session (XOAUTH2). It is used once.
	SASL sasl.Client
}

// Authenticator checks a local login and returns how to log in upstream.
//
// A failed login should be a *LoginError; any other error is reported to
// the client as a temporary failure.
type Authenticator interface {
	Authenticate(ctx context.Context, login *Login) (*Upstream, error)
}

// AccountAuthenticator is an optional interface of an Authenticator: it
// returns upstream credentials for a configured account without a local
// password. The SMTP server uses it only for SMTPOptions.UnauthenticatedAs,
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

// loginErrorOf classifies any error returned by an Authenticator.
func loginErrorOf(err error) *LoginError {
	var le *LoginError
	if errors.As(err, &le) {
		return le
	}
	return &LoginError{Kind: KindUnavailable, Reason: "temporary failure, try again later", Err: err}
}

// logLoginFailure logs a login the Authenticator refused: wrong
// credentials are routine, anything else needs attention.
func logLoginFailure(ctx context.Context, log *slog.Logger, user string, le *LoginError) {
	level := slog.LevelWarn
	if le.Kind == KindCredentials {
		level = slog.LevelInfo
	}
	log.Log(ctx, level, "login failed", "user", user, "kind", le.Kind.String(), "err", le.Error())
}

// reportUpstreamFailure logs a failed upstream login, with advice for the
// administrator if there is some, and tells auth when upstream's refusal
// (nil if it did not refuse) is about the account. It reports whether auth
// wants the login retried once with new credentials.
func reportUpstreamFailure(log *slog.Logger, auth Authenticator, user, account string, le *LoginError, advice string, refusal error, retried bool) (retry bool) {
	attrs := []any{"user", user, "account", account, "kind", le.Kind.String(), "err", le.Err.Error()}
	if advice != "" {
		attrs = append(attrs, "advice", advice)
	}
	if refusal != nil && le.Kind == KindAccount {
		if r, ok := auth.(UpstreamRejectionReporter); ok {
			retry = r.UpstreamRejected(account, refusal.Error()) && !retried
		}
	}
	if retry {
		log.Info("upstream refused the token; retrying with a new one", attrs...)
	} else {
		log.Warn("upstream login failed", attrs...)
	}
	return retry
}
