package broker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy"
)

const mailboxC = "carol@contoso.example"

// withAccounts returns a copy of cfg with accounts instead of its own.
func withAccounts(cfg *config.Config, accounts ...*config.Account) *config.Config {
	next := *cfg
	next.Accounts = accounts
	return &next
}

func TestReloadAddsKeepsAndRemovesAccounts(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	b.Start()
	pwA := e.addPassword(t, b, mailboxA)
	pwB := e.addPassword(t, b, mailboxB)
	tokA := mustLogin(t, b, "alice", pwA)
	mustLogin(t, b, mailboxB, pwB)
	requests := e.entra.count()

	app := e.cfg.Apps[0]
	carol := &config.Account{Mailbox: mailboxC, Login: mailboxC, App: app, Flow: config.FlowClientCredentials}
	next := withAccounts(e.cfg, e.cfg.Accounts[0], carol) // bob removed, carol added
	res, err := b.Reload(next)
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if !slices.Equal(res.Added, []string{mailboxC}) || !slices.Equal(res.Removed, []string{mailboxB}) || res.Kept != 1 {
		t.Fatalf("Reload result %+v; want carol added, bob removed, one kept", res)
	}
	if !slices.Equal(res.NewSignIns, []string{mailboxC}) {
		t.Fatalf("new sign-ins %v; want only carol's", res.NewSignIns)
	}

	// alice's sign-in kept its token: no request for it.
	if got := mustLogin(t, b, "alice", pwA); got != tokA {
		t.Fatalf("alice's token changed across the reload")
	}
	if e.entra.count() != requests {
		t.Fatalf("%d token requests after the reload; want none for a kept sign-in", e.entra.count()-requests)
	}
	// bob is refused like an unknown user; his app password stays stored.
	_, err = login(t, b, mailboxB, pwB)
	if le := loginKind(t, err); le.Kind != proxy.KindCredentials {
		t.Fatalf("removed account's login: %v; want refused credentials", err)
	}
	if _, err := e.store.AppPassword(context.Background(), mailboxB, pwB[:appPasswordIDLen]); err != nil {
		t.Fatalf("removed account's app password: %v; want kept in the store", err)
	}
	// carol is served at once.
	pwC := e.addPassword(t, b, mailboxC)
	mustLogin(t, b, mailboxC, pwC)

	// bob again: his app password works again.
	if _, err := b.Reload(withAccounts(e.cfg, e.cfg.Accounts...)); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	mustLogin(t, b, mailboxB, pwB)
	if st := b.AccountStatus(mailboxC); st.State != StateUnknown {
		t.Fatalf("carol after removal: %s; want unknown", st.State)
	}
}

func TestReloadChangedAppIsNewSignIn(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	b.Start()
	pwA := e.addPassword(t, b, mailboxA)
	mustLogin(t, b, "alice", pwA)

	// Same registration, new secret expiry: kept.
	same := *e.cfg.Apps[0]
	same.ClientSecretExpires = time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC)
	acct := *e.cfg.Accounts[0]
	acct.App = &same
	res, err := b.Reload(withAccounts(e.cfg, &acct))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.NewSignIns) != 0 {
		t.Fatalf("new sign-ins %v after an expiry date changed; want none", res.NewSignIns)
	}
	if got := b.tokens.account(mailboxA).sp().app; got != &same {
		t.Fatal("the kept sign-in does not use the new app settings")
	}

	// Another client_id: a new sign-in.
	other := same
	other.ClientID = "99999999-2222-3333-4444-555555555555"
	acct2 := acct
	acct2.App = &other
	res, err = b.Reload(withAccounts(e.cfg, &acct2))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.NewSignIns, []string{mailboxA}) {
		t.Fatalf("new sign-ins %v after client_id changed; want alice's", res.NewSignIns)
	}
}

func TestReloadRejectsBadConfigAndKeepsOld(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	b.Start()
	pwA := e.addPassword(t, b, mailboxA)
	dup := *e.cfg.Accounts[0]
	if _, err := b.Reload(withAccounts(e.cfg, e.cfg.Accounts[0], &dup)); err == nil {
		t.Fatal("Reload of an account configured twice succeeded")
	}
	mustLogin(t, b, "alice", pwA)
}

func TestReloadRetriesFailingSignIns(t *testing.T) {
	e := newEnv(t)
	e.entra.failWith(401, aadstsBody(7000215, "invalid_client", "AADSTS7000215: Invalid client secret provided."))
	b := e.broker(t)
	b.Start()
	pwA := e.addPassword(t, b, mailboxA)
	if _, err := login(t, b, "alice", pwA); err == nil {
		t.Fatal("login with a failing token request succeeded")
	}
	a := b.tokens.account(mailboxA)
	a.mu.Lock()
	retryAt := a.retryAt
	a.mu.Unlock()
	if retryAt.IsZero() {
		t.Fatal("no retry scheduled after a permanent failure")
	}
	e.entra.failWith(0, "")
	res, err := b.Reload(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Retried == 0 {
		t.Fatalf("Reload retried no failing sign-in: %+v", res)
	}
	// The refresher tries at once: the login works without moving the
	// clock past the permanent-error pause.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := login(t, b, "alice", pwA); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("login still fails 10s after a reload retried the sign-in")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAlive(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if b.Alive(ctx) {
		t.Fatal("Alive before Start")
	}
	b.Start()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if !b.Alive(ctx2) {
		t.Fatal("not Alive after Start")
	}
	b.Close()
	if b.Alive(context.Background()) {
		t.Fatal("Alive after Close")
	}
}
