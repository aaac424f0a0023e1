package broker

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/store"
	"golang.org/x/oauth2"
)

const (
	// minValidity is how long a cached token must still be valid to be
	// handed to a new session without asking the identity platform.
	minValidity = 5 * time.Minute
	// minRefreshMargin: refresh when less than max(lifetime/3, this) is left.
	minRefreshMargin = 10 * time.Minute
	// fetchTimeout bounds one token request, whoever waits for it.
	fetchTimeout = 30 * time.Second
	minBackoff   = 2 * time.Second
	maxBackoff   = 5 * time.Minute
	// permanentRetry paces retries of errors that need an admin, who may
	// fix them in Entra without touching broker.
	permanentRetry = 10 * time.Minute
	// freshToken: upstream rejecting a token younger than this is not the
	// token's fault (more likely a mailbox permission); keep it.
	freshToken = time.Minute
)

// Reasons shown to local clients.
const (
	reasonNeedsAdmin  = "account needs administrator action; see broker log"
	reasonUnavailable = "cannot get a token from Microsoft now; try again later"
)

// tokenState is one account's token and the state of its requests.
type tokenState struct {
	mailbox string
	// grant is nil when the account's flow cannot request tokens (yet).
	grant grant

	mu  sync.Mutex
	tok *token
	// done is non-nil while a request runs and is closed when its result
	// is in: the single flight that every waiting caller shares.
	done     chan struct{}
	err      *TokenError // last failure; nil after a success
	failures int         // consecutive transient failures
	retryAt  time.Time   // after a failure, no request before this
	rejected string      // upstream's last rejection of a token
	// persistMu orders store writes; persisted is the newest written.
	persistMu sync.Mutex
	persisted time.Time
}

// tokens keeps every account's access token valid.
type tokens struct {
	life   *lifecycle
	now    func() time.Time
	log    *slog.Logger
	client *http.Client
	store  store.Store
	sealer *Sealer
	wake   chan struct{}

	mu       sync.Mutex
	accounts map[string]*tokenState

	// Test hooks.
	onWait func() // a caller starts waiting for a request
	onPass func() // the refresher finished a pass
}

// get returns a token for mailbox, from memory whenever one is valid.
func (m *tokens) get(ctx context.Context, mailbox string) (string, error) {
	a := m.account(mailbox)
	if a == nil {
		return "", &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsAdmin, Err: errNotConfigured(mailbox)}
	}
	a.mu.Lock()
	now := m.now()
	if a.tok != nil && a.tok.Expiry.Sub(now) >= minValidity {
		if a.needsRefreshLocked(now) {
			m.startLocked(a)
		}
		t := a.tok.AccessToken
		a.mu.Unlock()
		return t, nil
	}
	if a.done == nil {
		if a.grant == nil || (a.err != nil && now.Before(a.retryAt)) {
			// Backing off or waiting for an admin: answer now.
			defer a.mu.Unlock()
			return a.lastResortLocked(now)
		}
		if !m.startLocked(a) {
			a.mu.Unlock()
			return "", &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: errClosed}
		}
	}
	done := a.done
	a.mu.Unlock()

	if m.onWait != nil {
		m.onWait()
	}
	select {
	case <-done:
	case <-ctx.Done():
		return "", &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: ctx.Err()}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastResortLocked(m.now())
}

// lastResortLocked serves any unexpired token (a session that ends early
// beats none), else explains the failure.
func (a *tokenState) lastResortLocked(now time.Time) (string, error) {
	if a.tok != nil && now.Before(a.tok.Expiry) {
		return a.tok.AccessToken, nil
	}
	switch {
	case a.grant == nil:
		return "", &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsAdmin, Err: errNoGrant}
	case a.err != nil && a.err.Permanent:
		return "", &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsAdmin, Err: a.err}
	case a.err != nil:
		return "", &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: a.err}
	}
	return "", &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: errNoToken}
}

// dueLocked says when the account next needs a request; ok is false when
// none can be made or one is running.
func (a *tokenState) dueLocked(now time.Time) (due time.Time, ok bool) {
	switch {
	case a.grant == nil || a.done != nil:
		return time.Time{}, false
	case a.err != nil:
		return a.retryAt, true
	case a.tok == nil:
		return now, true
	}
	return refreshAt(a.tok), true
}

func (a *tokenState) needsRefreshLocked(now time.Time) bool {
	due, ok := a.dueLocked(now)
	return ok && !now.Before(due)
}

// refreshAt is when less than max(lifetime/3, 10 min) is left; never in the
// first half of the lifetime, so that short-lived tokens do not loop.
func refreshAt(t *token) time.Time {
	life := t.lifetime()
	margin := min(max(life/3, minRefreshMargin), life/2)
	return t.Expiry.Add(-margin)
}

// startLocked starts a request detached from any caller. It reports false
// when the broker is closing.
func (m *tokens) startLocked(a *tokenState) bool {
	done := make(chan struct{})
	if !m.life.goFunc(func() { m.fetch(a, done) }) {
		return false
	}
	a.done = done
	return true
}

func (m *tokens) fetch(a *tokenState, done chan struct{}) {
	ctx, cancel := context.WithTimeout(m.life.ctx, fetchTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, m.client)
	t, err := a.grant.token(ctx, m.now())

	a.mu.Lock()
	switch {
	case err != nil && m.life.ctx.Err() != nil:
		// Shutting down: not the identity platform's failure.
	case err == nil:
		if a.err != nil {
			m.log.Info("token request succeeded again", "account", a.mailbox)
		}
		a.tok, a.err, a.failures, a.retryAt = t, nil, 0, time.Time{}
		m.log.Debug("new access token", "account", a.mailbox, "expires", t.Expiry)
	default:
		m.failLocked(a, classify(err))
	}
	a.done = nil
	close(done)
	a.mu.Unlock()

	if err == nil {
		m.persist(a, t)
	}
	m.kick()
}

func (m *tokens) failLocked(a *tokenState, te *TokenError) {
	now := m.now()
	prev := a.err
	a.err = te
	if te.Permanent {
		a.failures = 0
		a.retryAt = now.Add(permanentRetry + rand.N(permanentRetry/10))
		// Logged once per change, not per attempt or per login.
		if !te.same(prev) {
			m.log.Error("account needs administrator action", "account", a.mailbox, "err", te.Error())
		}
		return
	}
	a.failures++
	d := max(backoff(a.failures), te.retryAfter)
	a.retryAt = now.Add(d)
	m.log.Warn("token request failed; retrying", "account", a.mailbox, "attempt", a.failures, "retry_in", d.Round(time.Second), "err", te.Error())
}

// backoff is exponential with jitter: n=1 gives 1-2 s, doubling to 5 min.
func backoff(n int) time.Duration {
	d := maxBackoff
	if n < 20 {
		d = min(minBackoff<<(n-1), maxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}

// kick makes the refresher look again.
func (m *tokens) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *tokens) account(mailbox string) *tokenState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.accounts[mailbox]
}

func (m *tokens) snapshot() []*tokenState {
	m.mu.Lock()
	defer m.mu.Unlock()
	list := make([]*tokenState, 0, len(m.accounts))
	for _, a := range m.accounts {
		list = append(list, a)
	}
	return list
}

// upstreamRejected drops the account's access token so that the next login
// gets a new one, unless the token is too new to blame.
func (m *tokens) upstreamRejected(mailbox, detail string) {
	a := m.account(mailbox)
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rejected = detail
	now := m.now()
	if a.tok == nil || !now.Before(a.tok.Expiry) {
		return
	}
	if now.Sub(a.tok.Obtained) < freshToken {
		m.log.Warn("upstream rejected a fresh token; check the mailbox's permissions for the app (Add-MailboxPermission) and that IMAP/SMTP AUTH is enabled for it",
			"account", mailbox, "detail", detail)
		return
	}
	m.log.Warn("upstream rejected the token; requesting a new one", "account", mailbox, "detail", detail)
	// Expire the access token but keep the rest (a refresh token, later).
	t := *a.tok
	t.AccessToken, t.Expiry = "", t.Obtained
	a.tok = &t
	m.kick()
}
