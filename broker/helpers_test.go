package broker

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// signal wakes waiters whenever something they may be waiting for changed.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// waitUntil re-checks cond whenever s is notified.
func waitUntil(t *testing.T, s *signal, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		ch := s.wait()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// fakeClock is the injected clock; it moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// logBuffer collects log output from many goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

const (
	testClientID = "11111111-2222-3333-4444-555555555555"
	testSecret   = "Qx8Q~client.secret.VALUE.do-not-log"
	mailboxA     = "alice@contoso.example"
	mailboxB     = "bob@contoso.example"
)

// env is one test's world: a clock, a token endpoint, a store and a key
// that brokers built by env.broker share, as if restarted.
type env struct {
	clock *fakeClock
	entra *fakeEntra
	store *memStore
	logs  *logBuffer
	key   []byte
	cfg   *config.Config
	// realArgon keeps the production hash parameters; tests otherwise
	// use cheap ones to stay fast under -race.
	realArgon bool
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{clock: newFakeClock(), store: newMemStore(), logs: &logBuffer{}, key: bytes.Repeat([]byte{7}, KeySize)}
	e.entra = newFakeEntra(t)
	cloud := &config.Cloud{
		Name: "global", Authority: e.entra.URL(),
		IMAPHost: "outlook.office365.com:993", SMTPHost: "smtp.office365.com:587",
		AppResource: "https://outlook.office365.com", DelegatedResource: "https://outlook.office.com",
	}
	app := &config.App{Name: "legacy", Tenant: "contoso.example", ClientID: testClientID, ClientSecret: testSecret, Cloud: cloud, Authority: e.entra.URL()}
	e.cfg = &config.Config{
		StateDir: t.TempDir(),
		Apps:     []*config.App{app},
		Accounts: []*config.Account{
			{Mailbox: mailboxA, Login: "alice", App: app, Flow: config.FlowClientCredentials},
			{Mailbox: mailboxB, Login: mailboxB, App: app, Flow: config.FlowClientCredentials},
		},
	}
	return e
}

// broker builds a Broker; hooks run before Start so that they are set
// before any background goroutine reads them.
func (e *env) broker(t *testing.T, hooks ...func(*Broker)) *Broker {
	t.Helper()
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := New(e.cfg, e.store, Options{Key: e.key, Logger: log, Now: e.clock.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if !e.realArgon {
		b.pw.setParams(argonParams{memory: 64, time: 1, threads: 1})
	}
	for _, h := range hooks {
		h(b)
	}
	t.Cleanup(b.Close)
	return b
}

func (e *env) addPassword(t *testing.T, b *Broker, mailbox string) string {
	t.Helper()
	_, pw, err := b.AddAppPassword(context.Background(), mailbox, "test")
	if err != nil {
		t.Fatalf("AddAppPassword(%s): %v", mailbox, err)
	}
	return pw
}

// login authenticates and returns the upstream access token.
func login(t *testing.T, b *Broker, user, password string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up, err := b.Authenticate(ctx, &proxy.Login{Protocol: proxy.IMAP, Username: user, Password: password})
	if err != nil {
		return "", err
	}
	_, ir, err := up.SASL.Start()
	if err != nil {
		t.Fatalf("SASL.Start: %v", err)
	}
	u, tok, err := xoauth2.ParseResponse(ir)
	if err != nil || u != up.Account {
		t.Fatalf("XOAUTH2 response for %q: user %q, %v", up.Account, u, err)
	}
	return tok, nil
}

func mustLogin(t *testing.T, b *Broker, user, password string) string {
	t.Helper()
	tok, err := login(t, b, user, password)
	if err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	return tok
}

// loginKind returns the kind of a failed login.
func loginKind(t *testing.T, err error) *proxy.LoginError {
	t.Helper()
	var le *proxy.LoginError
	if !errors.As(err, &le) {
		t.Fatalf("got error %v, want a *proxy.LoginError", err)
	}
	return le
}

func wantKind(t *testing.T, err error, kind proxy.ErrorKind) *proxy.LoginError {
	t.Helper()
	if err == nil {
		t.Fatalf("login succeeded, want %v error", kind)
	}
	le := loginKind(t, err)
	if le.Kind != kind {
		t.Fatalf("got %v, want kind %v", err, kind)
	}
	return le
}

// state reads an account's token state under its lock.
func state(b *Broker, mailbox string, f func(a *signIn)) {
	a := b.tokens.account(mailbox)
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a)
}
