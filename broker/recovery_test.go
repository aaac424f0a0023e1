package broker

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/test/m365sim"
)

// While backing off after a temporary failure, a login sends one request
// once probeGap has passed since the last one ended, so logins recover
// within seconds of the platform without waiting out the backoff.
func TestLoginProbesDuringBackoff(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	e.entra.failWith(http.StatusServiceUnavailable, "")
	for range 2 {
		for range 5 {
			_, err := login(t, b, "alice", pw)
			wantKind(t, err, proxy.KindUnavailable)
		}
		e.clock.Advance(probeGap)
	}
	if n := e.entra.count(); n != 2 {
		t.Fatalf("10 logins over two probe gaps made %d requests, want 2", n)
	}
	state(b, mailboxA, func(a *signIn) {
		if a.failures != 2 {
			t.Fatalf("%d consecutive failures recorded, want 2", a.failures)
		}
	})
	e.entra.failWith(0, "") // the platform recovers
	mustLogin(t, b, "alice", pw)
	if n := e.entra.count(); n != 3 {
		t.Fatalf("got %d requests, want 3", n)
	}
}

// A valid token is served at once even when it is close to expiry and the
// platform hangs: the refresh runs in the background.
func TestLoginNeverWaitsWhileTokenValid(t *testing.T) {
	e := newEnv(t)
	e.entra.setExpiresIn(600)
	var fetched signal
	b := e.broker(t, func(b *Broker) { b.tokens.onFetch = fetched.notify })
	pw := e.addPassword(t, b, mailboxA)
	first := mustLogin(t, b, "alice", pw)
	e.entra.block()
	e.clock.Advance(8 * time.Minute) // 2 minutes left, less than minValidity
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	up, err := b.Authenticate(ctx, &proxy.Login{Protocol: proxy.IMAP, Username: "alice", Password: pw})
	if err != nil {
		t.Fatalf("login with a valid token waited on the identity platform: %v", err)
	}
	if up.Account != mailboxA {
		t.Fatalf("account %q", up.Account)
	}
	waitUntil(t, &e.entra.changed, "a background refresh", func() bool { return e.entra.count() == 2 })
	e.entra.release()
	waitUntil(t, &fetched, "the new token", func() bool {
		tok, err := login(t, b, "alice", pw)
		return err == nil && tok != first
	})
}

// A permanent failure (a wrong secret) is retried as soon as the secret
// file changes, not at the next scheduled attempt.
func TestNewSecretFileRetriedAtOnce(t *testing.T) {
	clock := newFakeClock()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	entra.AddTenant(simTenant)
	const goodSecret = "good-secret-value"
	entra.AddApp(m365sim.App{Tenant: simTenant, ClientID: simClientID, Secret: goodSecret,
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{mailboxA}})
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "client.secret")
	if err := os.WriteFile(secretFile, []byte("the-secret-id-not-its-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cloud := config.CloudByName("global")
	app := &config.App{Name: "app", Tenant: simTenant, ClientID: simClientID, ClientSecret: "the-secret-id-not-its-value",
		ClientSecretFile: secretFile, Cloud: cloud, Authority: entra.URL()}
	cfg := &config.Config{StateDir: dir, Apps: []*config.App{app}, Accounts: []*config.Account{
		{Mailbox: mailboxA, Login: mailboxA, App: app, Flow: config.FlowClientCredentials},
	}}
	logs := &logBuffer{}
	b, err := New(cfg, newMemStore(), Options{Key: make([]byte, KeySize), Now: clock.Now, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	var passed signal
	b.tokens.onPass = passed.notify
	b.Start()
	waitUntil(t, &passed, "the secret refused", func() bool { return b.AccountStatus(mailboxA).State == StateFailing })
	if next := b.AccountStatus(mailboxA).NextAttempt; next.Sub(clock.Now()) < 5*time.Minute {
		t.Fatalf("a wrong secret is retried at %v, want the permanent-error schedule", next)
	}
	if err := os.WriteFile(secretFile, []byte(goodSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitUntil(t, &passed, "the new secret used", func() bool { return b.AccountStatus(mailboxA).State == StateOK })
	t.Logf("recovered %v after the secret file was written", time.Since(start).Round(10*time.Millisecond))
	if s := logs.String(); !strings.Contains(s, "credential file changed; using the new credential") || strings.Contains(s, goodSecret) {
		t.Fatalf("log lacks the change, or holds the secret:\n%s", s)
	}
}
