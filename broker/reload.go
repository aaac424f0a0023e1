package broker

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/mailbroker/broker/config"
)

// ReloadResult says what a Reload changed, for the log and `broker reload`.
type ReloadResult struct {
	// Added and Removed are accounts (mailboxes) now served or no longer
	// served; Kept are the others.
	Added, Removed []string
	Kept           int
	// NewSignIns are sign-ins that start over from the store: new ones,
	// and those whose app now names another registration (tenant,
	// client_id, authority or cloud), flow, user or scopes.
	NewSignIns []string
	// Retried counts failing sign-ins asked to try again at once.
	Retried int
}

// Reload switches the broker to cfg's accounts and apps. Nothing changes
// when it fails: cfg is checked, and the tokens of new sign-ins read from
// the store, before anything is swapped.
//
// A sign-in whose store key and identity (app registration, flow, user,
// scopes) are unchanged keeps its state: its tokens, refresh schedule and
// any request in flight; it takes the new accounts and app settings
// (credential files, expiry dates) for its next request. A sign-in that is
// new, or whose identity changed, starts as at start-up, from its record in
// the store. A removed account is refused from now on; its sign-in's record
// and its app passwords stay in the store, unusable, until the account is
// configured again. Sessions already logged in are not touched.
//
// Every app's credential is taken from cfg (config.Load just read the
// secret and certificate files), and every failing sign-in is retried at
// once: the reload may be what fixed it.
func (b *Broker) Reload(cfg *config.Config) (*ReloadResult, error) {
	idx, err := indexAccounts(cfg)
	if err != nil {
		return nil, err
	}
	m := b.tokens
	// One reload at a time: a second one would mix its sign-ins into ours.
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()

	list, byMailbox, creds := groupSignIns(idx)
	old := m.snapshot()
	oldByKey := make(map[string]*signIn, len(old))
	for _, a := range old {
		oldByKey[a.key] = a
	}
	res := &ReloadResult{}
	var fresh []*signIn
	for i, a := range list {
		prev := oldByKey[a.key]
		if prev != nil && sameIdentity(prev, a) {
			// Keep prev, with the new accounts and app settings.
			prev.spec.Store(a.sp())
			list[i] = prev
			for _, mb := range a.mailboxes() {
				byMailbox[mb] = prev
			}
			continue
		}
		fresh = append(fresh, a)
		res.NewSignIns = append(res.NewSignIns, a.key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := m.loadInto(ctx, fresh); err != nil {
		return nil, fmt.Errorf("reading stored tokens: %w", err)
	}

	oldIdx := b.accounts.Load()
	for mb := range idx.byMailbox {
		if oldIdx.byMailbox[mb] == nil {
			res.Added = append(res.Added, mb)
		} else {
			res.Kept++
		}
	}
	for mb := range oldIdx.byMailbox {
		if idx.byMailbox[mb] == nil {
			res.Removed = append(res.Removed, mb)
		}
	}
	slices.Sort(res.Added)
	slices.Sort(res.Removed)

	// Sign-ins first, then the index: an account the index names always
	// has its sign-in.
	m.mu.Lock()
	m.signIns, m.byMailbox, m.creds = list, byMailbox, creds
	m.mu.Unlock()
	b.accounts.Store(idx)

	res.Retried = m.retryFailing()
	b.log.Info("accounts reloaded", "added", res.Added, "removed", res.Removed, "kept", res.Kept,
		"new_sign_ins", res.NewSignIns, "retried", res.Retried)
	return res, nil
}

// sameIdentity reports whether next is prev's sign-in with other accounts
// or app settings: the same record, registration, flow, user and scopes.
func sameIdentity(prev, next *signIn) bool {
	pa, na := prev.sp().app, next.sp().app
	return prev.key == next.key && prev.flow == next.flow && prev.user == next.user && prev.scope == next.scope &&
		pa.Tenant == na.Tenant && pa.ClientID == na.ClientID && pa.Authority == na.Authority &&
		pa.Cloud.Name == na.Cloud.Name
}

// retryFailing makes every failing sign-in due at once (those waiting for
// `broker login` keep waiting) and returns how many there were.
func (m *tokens) retryFailing() int {
	n := 0
	for _, a := range m.snapshot() {
		a.mu.Lock()
		if a.err != nil && !a.err.NeedsLogin {
			a.retryAt = time.Time{}
			n++
		}
		a.mu.Unlock()
	}
	m.kick()
	return n
}

// Alive reports whether the token refresher answers within ctx: the
// watchdog's check that the token manager still runs. It is false before
// Start and after Close.
func (b *Broker) Alive(ctx context.Context) bool {
	reply := make(chan struct{})
	select {
	case b.tokens.ping <- reply:
	case <-ctx.Done():
		return false
	case <-b.life.ctx.Done():
		return false
	}
	select {
	case <-reply:
		return true
	case <-ctx.Done():
		return false
	}
}
