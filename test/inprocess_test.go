package test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy/imap"
	"github.com/mailbroker/broker/store"
	"github.com/mailbroker/broker/test/m365sim"
)

// clock is a settable time source for the token broker.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// inProcess is the daemon assembled in the test process, for tests that
// need to control the broker's clock.
type inProcess struct {
	simEnv
	Clock    *clock
	Broker   *broker.Broker
	IMAPAddr string
}

func newInProcess(t testing.TB, log io.Writer) *inProcess {
	return newInProcessVia(t, log, nil)
}

// newInProcessVia routes the proxy's upstream connections through the
// address via returns for the upstream's (nil: direct).
func newInProcessVia(t testing.TB, log io.Writer, via func(addr string) string) *inProcess {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &inProcess{simEnv: simEnv{Entra: entra, Secret: "in-process-secret"}, Clock: &clock{now: time.Now()}}
	entra.AddTenant(tenant)
	entra.AddApp(m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: env.Secret,
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{mailbox},
	})
	if env.Upstream, err = m365sim.NewIMAP(entra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Upstream.Close() })
	if err := env.Upstream.AddMailbox(mailbox); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := writeFile(t, dir, "ca.pem", env.Upstream.CACertPEM())
	secret := writeFile(t, dir, "secret", []byte(env.Secret))
	cfgText := brokerConfig(filepath.Join(dir, "state"), env.Upstream.Addr(), ca, entra.URL(), tenant, clientID, secret, mailbox)
	cfg, err := config.Parse([]byte(cfgText), filepath.Join(dir, "broker.toml"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "state", "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key := make([]byte, 32)
	rand.Read(key)
	logger := slog.New(slog.NewTextHandler(log, nil))
	env.Broker, err = broker.New(cfg, st, broker.Options{Key: key, Logger: logger, Now: env.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Broker.Close)
	env.Broker.Start()
	upstream := env.Upstream.Addr()
	if via != nil {
		upstream = via(upstream)
	}
	host, _, _ := net.SplitHostPort(upstream)
	srv := imap.NewServer(&imap.Options{
		Upstream:    upstream,
		UpstreamTLS: &tls.Config{ServerName: host, RootCAs: certPool(t, env.Upstream.CACertPEM())},
		Auth:        env.Broker,
		Logger:      logger,
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	env.IMAPAddr = l.Addr().String()
	_, env.Password, err = env.Broker.AddAppPassword(context.Background(), mailbox, "test")
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestExpiredTokenOneRefreshForFiftyLogins: once the cached token has
// expired, 50 simultaneous logins cause exactly one token request.
func TestExpiredTokenOneRefreshForFiftyLogins(t *testing.T) {
	env := newInProcess(t, io.Discard)
	first := dialProxy(t, env.IMAPAddr)
	if err := first.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("first LOGIN: %v", err)
	}
	before := env.Entra.TokenRequests()
	env.Clock.Advance(3 * time.Hour)

	const logins = 50
	var wg sync.WaitGroup
	errs := make(chan error, logins)
	for range logins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Not dialProxy: a goroutine other than the test's must not
			// call t.Fatal, so errors go to the test's goroutine.
			c, err := imapclient.DialInsecure(env.IMAPAddr, nil)
			if err != nil {
				errs <- fmt.Errorf("dial proxy: %w", err)
				return
			}
			defer c.Close()
			errs <- c.Login(mailbox, env.Password).Wait()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("LOGIN after expiry: %v", err)
		}
	}
	if got := env.Entra.TokenRequests() - before; got != 1 {
		t.Fatalf("token requests for %d logins after expiry: got %d, want 1", logins, got)
	}
}

// TestRefreshFailureWhileTokenValid: in the refresh window, with the
// identity platform failing, logins keep being served from the cached token
// and never wait for the failing refresh.
func TestRefreshFailureWhileTokenValid(t *testing.T) {
	env := newInProcess(t, io.Discard)
	c := dialProxy(t, env.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("first LOGIN: %v", err)
	}
	before := env.Entra.TokenRequests()
	env.Entra.SetFailure(&m365Unavailable)
	release := env.Entra.Hold() // a refresh attempt now hangs until released
	defer release()
	env.Clock.Advance(60 * time.Minute) // 15 minutes of the 75 left: refresh due

	for i := range 5 {
		c := dialProxy(t, env.IMAPAddr)
		if err := c.Login(mailbox, env.Password).Wait(); err != nil {
			t.Fatalf("LOGIN %d with a refresh pending: %v", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := env.Entra.WaitTokenRequests(ctx, before+1); err != nil {
		t.Fatalf("no background refresh attempt in the refresh window: %v", err)
	}
}
