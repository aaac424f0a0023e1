package broker

import "github.com/mailbroker/broker/proxy"

// Observer is told of the token manager's events that broker's metrics
// count. Its methods must be quick and must not block; they may be called
// concurrently. A nil Options.Observer means none.
type Observer interface {
	// TokenRefresh: a token request to the identity platform for an
	// account's IMAP and SMTP scopes ended in one of the Refresh* outcomes.
	TokenRefresh(outcome string)
}

// Outcomes of a token request (Observer.TokenRefresh).
const (
	RefreshOK = "ok"
	// RefreshTransient: a failure retried with backoff (network, throttling,
	// the platform's own errors).
	RefreshTransient = "transient"
	// RefreshPermanent: an administrator must act (consent, secret,
	// permissions); retried only every 10 minutes.
	RefreshPermanent = "permanent"
	// RefreshNeedsLogin: the delegated sign-in is gone; only `broker login`
	// brings it back.
	RefreshNeedsLogin = "needs_login"
)

// RefreshOutcomes lists every token request outcome.
var RefreshOutcomes = []string{RefreshOK, RefreshTransient, RefreshPermanent, RefreshNeedsLogin}

// refreshOutcome is the outcome of a request that failed with te, or
// RefreshOK for nil.
func refreshOutcome(te *TokenError) string {
	switch {
	case te == nil:
		return RefreshOK
	case te.NeedsLogin:
		return RefreshNeedsLogin
	case te.Permanent:
		return RefreshPermanent
	}
	return RefreshTransient
}

// observe tells the observer, if any, of a request's outcome.
func (m *tokens) observe(te *TokenError) {
	if m.obs != nil {
		m.obs.TokenRefresh(refreshOutcome(te))
	}
}

// throttledError is the detail of a login the throttle refused: the
// throttle's reason for the log, and proxy.ErrThrottled for metrics.
type throttledError string

func (e throttledError) Error() string        { return string(e) }
func (e throttledError) Is(target error) bool { return target == proxy.ErrThrottled }
