package proxy

import (
	"context"
	"errors"
	"log/slog"
)

// ReasonMailboxBusy is the client's reason when a login found every
// upstream connection of its mailbox taken for the whole wait (ErrSlotWait).
const ReasonMailboxBusy = "Too many connections for this mailbox, try again later"

// LoginPipeline is a protocol server's half of the login pipeline that IMAP,
// POP3 and SMTP share (see LoginUpstream).
type LoginPipeline struct {
	// Auth is told when upstream refuses its credentials, if it is an
	// UpstreamRejectionReporter. Required.
	Auth Authenticator
	// Classify turns an error of the protocol's upstream login into the
	// client's LoginError, with advice for the administrator ("" if there
	// is none) and upstream's refusal of the credentials (nil when
	// upstream did not refuse them, e.g. unreachable): only a refusal is
	// reported to the Authenticator. Required.
	Classify func(err error) (le *LoginError, advice string, refusal error)
	// Protocol names the protocol to Observer.
	Protocol Protocol
	// Observer is told of each login's outcome. Nil: none.
	Observer Observer
}

// LoginUpstream runs one client login through the pipeline: authorize asks
// for upstream credentials (Authenticator.Authenticate, or
// AccountAuthenticator.AuthenticateAccount); a refusal is logged and
// returned. Then login logs in upstream with them. A failure is classified
// by p.Classify, logged with its advice, and a refusal is reported to
// p.Auth; when the Authenticator answers that it discarded a token it had
// believed valid, the login is retried once from authorize, within the same
// client login. A wait for a mailbox slot that ran out (ErrSlotWait, logged
// where it happened) fails with ReasonMailboxBusy and is neither logged again
// nor reported.
//
// user names the client's login in the log. On success it returns login's
// result and the credentials it used; every failure is a *LoginError. The
// outcome is told to p.Observer.
func LoginUpstream[T any](ctx context.Context, p *LoginPipeline, log *slog.Logger, user string,
	authorize func(context.Context) (*Upstream, error),
	login func(context.Context, *Upstream) (T, error)) (T, *Upstream, *LoginError) {
	u, up, le := loginUpstream(ctx, p, log, user, authorize, login)
	ObserverOr(p.Observer).LoginOutcome(p.Protocol, LoginOutcomeOf(le))
	return u, up, le
}

func loginUpstream[T any](ctx context.Context, p *LoginPipeline, log *slog.Logger, user string,
	authorize func(context.Context) (*Upstream, error),
	login func(context.Context, *Upstream) (T, error)) (T, *Upstream, *LoginError) {
	var zero T
	for retried := false; ; retried = true {
		up, err := authorize(ctx)
		if err == nil && (up == nil || (up.SASL == nil && up.Bearer == nil)) {
			err = errors.New("authenticator returned no upstream")
		}
		if err != nil {
			le := loginErrorOf(err)
			logLoginFailure(ctx, log, user, le)
			return zero, nil, le
		}
		u, err := login(ctx, up)
		if err == nil {
			return u, up, nil
		}
		if errors.Is(err, ErrSlotWait) {
			return zero, nil, &LoginError{Kind: KindUnavailable, Reason: ReasonMailboxBusy, Err: err}
		}
		le, advice, refusal := p.Classify(err)
		if !reportUpstreamFailure(log, p.Auth, user, up.Account, le, advice, refusal, retried) {
			return zero, nil, le
		}
	}
}

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
