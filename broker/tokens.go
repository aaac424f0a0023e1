package broker

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailbroker/broker/config"
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
	// maxRefreshInterval keeps a refresh token in use: Entra ends one that
	// is not redeemed for 90 days (AADSTS700082).
	maxRefreshInterval = 24 * time.Hour
	// fetchTimeout bounds one token request, whoever waits for it.
	fetchTimeout = 30 * time.Second
	minBackoff   = 2 * time.Second
	maxBackoff   = 5 * time.Minute
	// permanentRetry paces retries of errors that need an admin, who may
	// fix them in Entra without touching broker.
	permanentRetry = 10 * time.Minute
	// probeGap spaces the requests that logins make while backing off.
	probeGap = 3 * time.Second
	// freshToken: upstream rejecting a token younger than this is not the
	// token's fault (more likely a mailbox permission); keep it.
	freshToken = time.Minute
)

// Reasons shown to local clients.
const (
	reasonNeedsAdmin  = "account needs administrator action; see broker log"
	reasonNeedsLogin  = "account must be signed in again by an administrator (broker login); see broker log"
	reasonUnavailable = "cannot get a token from Microsoft now; try again later"
)

// signIn is the credential behind one or more accounts: an app-only
// account's own, or a user's delegated sign-in, which every account with
// the same app and login user shares (a delegate and its shared
// mailboxes).
type signIn struct {
	// key is the store record's key: the mailbox of an app-only account,
	// "signin:<app>:<user>" for a delegated sign-in.
	key   string
	flow  config.Flow
	user  string // "" for app-only
	scope string
	// spec is what a reload may change without making it another sign-in:
	// its accounts and its app's settings other than who the app is.
	spec atomic.Pointer[signInSpec]

	// redeem serialises requests that redeem or replace the refresh token,
	// so that no refresh token is redeemed twice and the store always holds
	// the newest before it is used.
	redeem sync.Mutex

	mu  sync.Mutex
	tok *token
	// done is non-nil while a request runs and is closed when its result
	// is in: the single flight that every waiting caller shares.
	done     chan struct{}
	err      *TokenError // last failure; nil after a success
	failures int         // consecutive transient failures
	retryAt  time.Time   // after a failure, no request before this
	rejected string      // upstream's last rejection of a token
	// lastRefresh is when the last request ended, lastOK its outcome.
	lastRefresh time.Time
	lastOK      bool
	// others are access tokens for other scopes (`broker token`).
	others map[string]*token
}

// signInSpec is the part of a sign-in that Reload replaces whole.
type signInSpec struct {
	cred      *appCredential
	app       *config.App
	mailboxes []string
	grant     grant
}

func (a *signIn) sp() *signInSpec { return a.spec.Load() }

// mailboxes are the accounts the sign-in serves, sorted.
func (a *signIn) mailboxes() []string { return a.sp().mailboxes }

func (a *signIn) account() string {
	if mb := a.mailboxes(); len(mb) == 1 {
		return mb[0]
	}
	return a.user
}

// tokens keeps every sign-in's access token valid.
type tokens struct {
	life   *lifecycle
	now    func() time.Time
	log    *slog.Logger
	client *http.Client
	store  store.Store
	sealer *Sealer
	wake   chan struct{}
	obs    Observer // nil: none
	// ping asks the refresher to answer: Broker.Alive.
	ping chan chan struct{}
	// reloadMu serialises Reloads.
	reloadMu sync.Mutex

	mu        sync.Mutex
	byMailbox map[string]*signIn
	signIns   []*signIn
	creds     map[*config.App]*appCredential // each app's, watched

	expiryChecked time.Time // the refresher's

	// Test hooks.
	onWait  func() // a caller starts waiting for a request
	onPass  func() // the refresher finished a pass
	onFetch func() // a request's result is in use
}

// signInKey is the store key of a delegated sign-in; it cannot be a
// mailbox, which has no colon.
func signInKey(app, user string) string { return "signin:" + normalize(app) + ":" + user }

// newTokens groups the accounts into sign-ins.
func newTokens(idx *accountIndex) *tokens {
	m := &tokens{wake: make(chan struct{}, 1), ping: make(chan chan struct{})}
	m.signIns, m.byMailbox, m.creds = groupSignIns(idx)
	return m
}

// groupSignIns groups the accounts into new sign-ins, without tokens, and
// makes each app's credential from the configuration.
func groupSignIns(idx *accountIndex) ([]*signIn, map[string]*signIn, map[*config.App]*appCredential) {
	byMailbox := make(map[string]*signIn)
	creds := make(map[*config.App]*appCredential)
	var list []*signIn
	shared := map[string]*signIn{}
	specs := map[*signIn]*signInSpec{}
	for mailbox, acct := range idx.byMailbox {
		key := mailbox
		if acct.Delegated() {
			key = signInKey(acct.App.Name, acct.LoginUser)
		}
		a := shared[key]
		if a == nil {
			scopes := acct.Scopes
			if len(scopes) == 0 {
				scopes = config.DefaultScopes(acct.Flow, acct.App.Cloud)
			}
			cred := creds[acct.App]
			if cred == nil {
				cred = newAppCredential(acct.App)
				creds[acct.App] = cred
			}
			a = &signIn{key: key, flow: acct.Flow, user: acct.LoginUser, scope: scopeString(scopes)}
			sp := &signInSpec{cred: cred, app: acct.App}
			ep := newEndpoint(acct.App, cred)
			if acct.Delegated() {
				sp.grant = delegated{ep: ep, acct: acct}
			} else {
				sp.grant = clientCredentials{ep: ep}
			}
			specs[a] = sp
			shared[key] = a
			list = append(list, a)
		}
		specs[a].mailboxes = append(specs[a].mailboxes, mailbox)
		byMailbox[mailbox] = a
	}
	// Stable order for messages and the CLI.
	slices.SortFunc(list, func(a, b *signIn) int { return strings.Compare(a.key, b.key) })
	for _, a := range list {
		sp := specs[a]
		slices.Sort(sp.mailboxes)
		a.spec.Store(sp)
	}
	return list, byMailbox, creds
}

// get returns a token for mailbox, from memory whenever one is valid, and
// when it expires.
func (m *tokens) get(ctx context.Context, mailbox string) (string, time.Time, error) {
	a := m.account(mailbox)
	if a == nil {
		return "", time.Time{}, &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsAdmin, Err: errNotConfigured(mailbox)}
	}
	a.mu.Lock()
	now := m.now()
	if a.tok != nil && a.tok.AccessToken != "" && now.Before(a.tok.Expiry) {
		// Never wait on the identity platform while a token is valid: a
		// session that Exchange ends at expiry beats a login that hangs.
		if a.needsRefreshLocked(now) || (a.done == nil && a.tok.Expiry.Sub(now) < minValidity && a.mayProbeLocked(now)) {
			m.startLocked(a)
		}
		t, exp := a.tok.AccessToken, a.tok.Expiry
		a.mu.Unlock()
		return t, exp, nil
	}
	if a.done == nil {
		if a.err != nil && (a.err.NeedsLogin || now.Before(a.retryAt) && !a.mayProbeLocked(now)) {
			// Waiting for an admin, or backing off with a request made
			// moments ago: answer now.
			defer a.mu.Unlock()
			return a.lastResortLocked(now)
		}
		if !m.startLocked(a) {
			a.mu.Unlock()
			return "", time.Time{}, &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: errClosed}
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
		return "", time.Time{}, &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: ctx.Err()}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastResortLocked(m.now())
}

// lastResortLocked serves any unexpired token (a session that ends early
// beats none) and its expiry, else explains the failure.
func (a *signIn) lastResortLocked(now time.Time) (string, time.Time, error) {
	if a.tok != nil && a.tok.AccessToken != "" && now.Before(a.tok.Expiry) {
		return a.tok.AccessToken, a.tok.Expiry, nil
	}
	switch {
	case a.err != nil && a.err.NeedsLogin:
		return "", time.Time{}, &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsLogin, Err: a.err}
	case a.err != nil && a.err.Permanent:
		return "", time.Time{}, &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsAdmin, Err: a.err}
	case a.err != nil:
		return "", time.Time{}, &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: a.err}
	}
	return "", time.Time{}, &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: errNoToken}
}

// dueLocked says when the sign-in next needs a request; ok is false when
// none can be made (it waits for `broker login`) or one is running.
func (a *signIn) dueLocked(now time.Time) (due time.Time, ok bool) {
	switch {
	case a.done != nil:
		return time.Time{}, false
	case a.err != nil && a.err.NeedsLogin:
		return time.Time{}, false
	case a.err != nil:
		return a.retryAt, true
	case a.tok == nil || a.tok.AccessToken == "":
		return now, true
	}
	return refreshAt(a.tok), true
}

// mayProbeLocked: a login may send a request ahead of the backoff schedule
// when the failure was temporary and no request ended for probeGap, so that
// logins work again within seconds of the platform's recovery while a
// crowd of logins still makes at most one request per probeGap.
func (a *signIn) mayProbeLocked(now time.Time) bool {
	if a.err != nil && a.err.Permanent {
		return false
	}
	return now.Sub(a.lastRefresh) >= probeGap
}

func (a *signIn) needsRefreshLocked(now time.Time) bool {
	due, ok := a.dueLocked(now)
	return ok && !now.Before(due)
}

// refreshAt is when less than max(lifetime/3, 10 min) is left; never in the
// first half of the lifetime, so that short-lived tokens do not loop; and
// at least daily, so that a refresh token never idles out.
func refreshAt(t *token) time.Time {
	life := t.lifetime()
	margin := min(max(life/3, minRefreshMargin), life/2)
	return minTime(t.Expiry.Add(-margin), t.Obtained.Add(maxRefreshInterval))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// startLocked starts a request detached from any caller. It reports false
// when the broker is closing.
func (m *tokens) startLocked(a *signIn) bool {
	done := make(chan struct{})
	if !m.life.goFunc(func() { m.fetch(a, done) }) {
		return false
	}
	a.done = done
	return true
}

func (m *tokens) fetch(a *signIn, done chan struct{}) {
	ctx, cancel := context.WithTimeout(m.life.ctx, fetchTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, m.client)

	a.redeem.Lock()
	a.mu.Lock()
	cur := a.tok
	a.mu.Unlock()
	t, err := a.sp().grant.token(ctx, m.now(), cur, a.scope)
	if err == nil {
		// Stored before it is used: the refresh token just redeemed may be
		// the last one a crash would leave.
		m.persist(a, t)
	}
	a.redeem.Unlock()

	a.mu.Lock()
	a.lastRefresh = m.now()
	switch {
	case err != nil && m.life.ctx.Err() != nil:
		// Shutting down: not the identity platform's failure.
	case err == nil:
		if a.err != nil {
			m.log.Info("token request succeeded again", "account", a.account())
		}
		a.tok, a.err, a.failures, a.retryAt, a.lastOK = t, nil, 0, time.Time{}, true
		m.observe(nil)
		m.log.Info("token refreshed", "account", a.account(), "flow", string(a.flow), "expires", t.Expiry.Round(time.Second))
	default:
		a.lastOK = false
		te := classify(err)
		m.observe(te)
		m.failLocked(a, te)
	}
	a.done = nil
	close(done)
	a.mu.Unlock()
	if m.onFetch != nil {
		m.onFetch()
	}
	m.kick()
}

func (m *tokens) failLocked(a *signIn, te *TokenError) {
	now := m.now()
	prev := a.err
	a.err = te
	switch {
	case te.NeedsLogin:
		a.failures, a.retryAt = 0, time.Time{}
		if !te.same(prev) {
			m.log.Error("account needs sign-in: run `broker login "+a.mailboxes()[0]+"`", "account", a.account(), "accounts", a.mailboxes(), "err", te.Error())
		}
	case te.Permanent:
		a.failures = 0
		a.retryAt = now.Add(permanentRetry + rand.N(permanentRetry/10))
		// Logged once per change, not per attempt or per login.
		if !te.same(prev) {
			m.log.Error("account needs administrator action", "account", a.account(), "err", te.Error())
		}
	default:
		a.failures++
		d := max(backoff(a.failures), te.retryAfter)
		a.retryAt = now.Add(d)
		m.log.Warn("token request failed; retrying", "account", a.account(), "attempt", a.failures, "retry_in", d.Round(time.Second), "err", te.Error())
	}
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

func (m *tokens) account(mailbox string) *signIn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byMailbox[mailbox]
}

func (m *tokens) snapshot() []*signIn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*signIn(nil), m.signIns...)
}

// upstreamRejected drops the sign-in's access token so that the next login
// gets a new one, unless the token is too new to blame. It reports whether
// a new token is worth trying at once.
func (m *tokens) upstreamRejected(mailbox, detail string) bool {
	a := m.account(mailbox)
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rejected = detail
	now := m.now()
	if a.tok == nil || a.tok.AccessToken == "" || !now.Before(a.tok.Expiry) {
		return false
	}
	if now.Sub(a.tok.Obtained) < freshToken {
		m.log.Warn("upstream rejected a fresh token; check the mailbox's permissions (Add-MailboxPermission for the app or the signed-in user) and that IMAP/SMTP AUTH is enabled for it",
			"account", mailbox, "detail", detail)
		return false
	}
	m.log.Warn("upstream rejected the token; requesting a new one", "account", mailbox, "detail", detail)
	// Expire the access token but keep the rest: the refresh token.
	t := *a.tok
	t.AccessToken, t.Expiry = "", t.Obtained
	a.tok = &t
	m.kick()
	return true
}

// signedIn installs the credentials of an interactive sign-in.
func (m *tokens) signedIn(a *signIn, t *token) error {
	a.redeem.Lock()
	defer a.redeem.Unlock()
	if err := m.persist(a, t); err != nil {
		return err
	}
	a.mu.Lock()
	a.tok, a.err, a.failures, a.retryAt, a.others = t, nil, 0, time.Time{}, nil
	a.lastRefresh, a.lastOK = m.now(), true
	a.mu.Unlock()
	m.log.Info("signed in", "accounts", a.mailboxes(), "user", t.User, "flow", string(a.flow))
	m.kick()
	return nil
}

// logout forgets a sign-in's tokens, in memory and in the store.
func (m *tokens) logout(ctx context.Context, a *signIn) error {
	a.redeem.Lock()
	defer a.redeem.Unlock()
	if err := m.store.DeleteAccount(ctx, a.key); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	a.mu.Lock()
	a.tok, a.others, a.failures, a.retryAt = nil, nil, 0, time.Time{}
	a.err = nil
	if a.user != "" {
		a.err = errLoggedOut
	}
	a.mu.Unlock()
	m.log.Info("logged out", "accounts", a.mailboxes())
	m.kick()
	return nil
}

// other returns an access token for scope, which is not the accounts' own:
// a Graph token for a local tool, say. It is cached until close to expiry.
func (m *tokens) other(ctx context.Context, a *signIn, scope string) (*token, error) {
	a.mu.Lock()
	if t := a.others[scope]; t != nil && t.Expiry.Sub(m.now()) >= minValidity {
		a.mu.Unlock()
		return t, nil
	}
	a.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, m.client)
	a.redeem.Lock()
	defer a.redeem.Unlock()
	a.mu.Lock()
	cur := a.tok
	a.mu.Unlock()
	t, err := a.sp().grant.token(ctx, m.now(), cur, scope)
	if err != nil {
		return nil, classify(err)
	}
	if cur != nil && t.RefreshToken != "" && t.RefreshToken != cur.RefreshToken {
		// The redemption rotated the sign-in's refresh token: keep the
		// newest, stored first.
		main := *cur
		main.RefreshToken, main.RefreshIssued = t.RefreshToken, t.RefreshIssued
		if err := m.persist(a, &main); err != nil {
			return nil, err
		}
		a.mu.Lock()
		if a.tok != nil {
			next := *a.tok
			next.RefreshToken, next.RefreshIssued = main.RefreshToken, main.RefreshIssued
			a.tok = &next
		}
		a.mu.Unlock()
	}
	a.mu.Lock()
	if a.others == nil {
		a.others = make(map[string]*token)
	}
	a.others[scope] = t
	a.mu.Unlock()
	return t, nil
}
