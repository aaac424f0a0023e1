package test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/mailbroker/broker/test/m365sim"
)

// recoveryBound is what issue 8 asks: logins work again within 10 s of
// the identity platform's recovery, or of a fixed secret being written.
const recoveryBound = 10 * time.Second

// recoveryEnv is a daemon in front of the simulator whose token lifetime
// and client secret file the test controls.
type recoveryEnv struct {
	entra      *m365sim.Entra
	daemon     *daemon
	password   string
	secretFile string
	secret     string
}

// newRecoveryEnv starts the daemon once before has staged the platform's
// state (an outage, say), so that its first token request meets it.
func newRecoveryEnv(t *testing.T, lifetime time.Duration, fileSecret string, before func(*m365sim.Entra)) *recoveryEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{TokenLifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &recoveryEnv{entra: entra, secret: "Rc8Q~recovery.secret-value_0123456789"}
	entra.AddTenant(tenant)
	entra.AddApp(m365sim.App{Tenant: tenant, ClientID: clientID, Secret: env.secret,
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{mailbox}})
	upstream, err := m365sim.NewIMAP(entra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upstream.Close() })
	if err := upstream.AddMailbox(mailbox); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if fileSecret == "" {
		fileSecret = env.secret
	}
	ca := writeFile(t, dir, "upstream-ca.pem", upstream.CACertPEM())
	env.secretFile = writeFile(t, dir, "client.secret", []byte(fileSecret+"\n"))
	cfg := brokerConfig(dir+"/state", upstream.Addr(), ca, entra.URL(), tenant, clientID, env.secretFile, mailbox)
	if before != nil {
		before(entra)
	}
	env.daemon = startDaemon(t, dir, cfg)
	_, env.password = env.daemon.addAppPassword(mailbox)
	return env
}

// login logs in through broker once and reports how it went and how long
// it took.
func (env *recoveryEnv) login(t *testing.T) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	c, err := imapclient.DialInsecure(env.daemon.IMAPAddr, nil)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	err = c.Login(mailbox, env.password).Wait()
	if err == nil {
		c.Logout().Wait()
	}
	return time.Since(start), err
}

// untilLogin retries logins as a legacy client would, every 250 ms, and
// returns when one succeeds, how long after since.
func (env *recoveryEnv) untilLogin(t *testing.T, since time.Time) time.Duration {
	t.Helper()
	deadline := time.Now().Add(recoveryBound + 20*time.Second)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := env.login(t)
		if err == nil {
			return time.Since(since)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no login succeeded %v after recovery: %v\n%s", time.Since(since), err, env.daemon.Log())
		}
		<-tick.C
	}
}

// outage keeps a client logging in every 250 ms while the platform is
// down, until broker has sent requests token requests, and checks that
// every login fails with a temporary refusal, so that clients retry.
func (env *recoveryEnv) outage(t *testing.T, requests int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	start, logins := time.Now(), 0
	for env.entra.TokenRequests() < requests {
		_, err := env.login(t)
		logins++
		if err == nil {
			t.Fatal("login succeeded during the outage")
		}
		if !strings.Contains(err.Error(), "UNAVAILABLE") {
			t.Fatalf("login during the outage: %v, want NO [UNAVAILABLE]", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d token requests in a minute of outage", env.entra.TokenRequests())
		}
		<-tick.C
	}
	if max := int64(time.Since(start)/probeGapE2E) + 2; env.entra.TokenRequests() > max {
		t.Fatalf("%d token requests for %d logins over %v: a retry storm", env.entra.TokenRequests(), logins, time.Since(start))
	}
}

// probeGapE2E is broker's spacing of the requests that logins make while
// it backs off (broker.probeGap).
const probeGapE2E = 3 * time.Second

func TestLoginsRecoverWithThePlatform(t *testing.T) {
	outages := []struct {
		name  string
		start func(e *m365sim.Entra) (stop func())
	}{
		{"503", func(e *m365sim.Entra) func() {
			e.SetFailure(&m365Unavailable)
			return func() { e.SetFailure(nil) }
		}},
		{"500", func(e *m365sim.Entra) func() {
			e.SetFailure(&m365sim.Failure{Status: 500, Error: "server_error", Description: "AADSTS90000: An internal error occurred."})
			return func() { e.SetFailure(nil) }
		}},
		{"hang", func(e *m365sim.Entra) func() { return e.Hold() }},
	}
	for _, o := range outages {
		t.Run(o.name, func(t *testing.T) {
			t.Parallel()
			var recover func()
			env := newRecoveryEnv(t, 0, "", func(e *m365sim.Entra) { recover = o.start(e) })
			if o.name == "hang" {
				// Held requests outlast a login's wait: each login fails.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				go env.login(t)
				if err := env.entra.WaitTokenRequests(ctx, 1); err != nil {
					t.Fatal(err)
				}
			} else {
				// Long enough that broker's own backoff passes the bound:
				// only the logins' probes can bring recovery in time.
				env.outage(t, 5)
			}
			before := env.entra.TokenRequests()
			recovered := time.Now()
			recover()
			took := env.untilLogin(t, recovered)
			t.Logf("%s: first login %v after recovery; %d token requests during the outage", o.name, took.Round(10*time.Millisecond), before)
			if took > recoveryBound {
				t.Fatalf("first login %v after recovery, want ≤ %v", took, recoveryBound)
			}
		})
	}
}

func TestFixedSecretFileServesWithoutRestart(t *testing.T) {
	env := newRecoveryEnv(t, 0, "the-secret-id-instead-of-its-value", nil)
	_, err := env.login(t)
	if err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Fatalf("login with a wrong client secret: %v, want NO [AUTHENTICATIONFAILED]", err)
	}
	env.daemon.waitLog("AADSTS7000215")
	written := time.Now()
	if err := os.WriteFile(env.secretFile, []byte(env.secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	took := env.untilLogin(t, written)
	t.Logf("first login %v after the secret file was fixed", took.Round(10*time.Millisecond))
	if took > recoveryBound {
		t.Fatalf("first login %v after the fix, want ≤ %v", took, recoveryBound)
	}
	if strings.Contains(env.daemon.Log(), env.secret) {
		t.Fatal("the secret is in the log")
	}
}

// A token shorter-lived than broker's usual margin is still served at once
// while the platform hangs; the refresh waits in the background.
func TestNoSlowLoginWhileTokenValid(t *testing.T) {
	env := newRecoveryEnv(t, 4*time.Minute, "", nil)
	if _, err := env.login(t); err != nil {
		t.Fatal(err)
	}
	release := env.entra.Hold()
	defer release()
	var slowest time.Duration
	for range 20 {
		took, err := env.login(t)
		if err != nil {
			t.Fatalf("login with a valid token during a platform hang: %v", err)
		}
		slowest = max(slowest, took)
	}
	t.Logf("slowest of 20 logins during the hang: %v", slowest.Round(time.Millisecond))
	if slowest > time.Second {
		t.Fatalf("a login took %v while a valid token existed, want < 1s", slowest)
	}
	if n := env.entra.TokenRequests(); n > 3 {
		t.Fatalf("%d token requests for 21 logins with a valid token", n)
	}
}

var errTrickleClosed = errors.New("closed")

// trickle sends one byte every interval until the server closes the
// connection, and returns when it did and its last line.
func trickle(t *testing.T, addr, payload string, interval time.Duration) (time.Duration, string, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	closed := make(chan string, 1)
	go func() {
		var all []byte
		buf := make([]byte, 512)
		for {
			n, err := conn.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil {
				closed <- string(all)
				return
			}
		}
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	limit := time.NewTimer(time.Minute)
	defer limit.Stop()
	for i := 0; ; i++ {
		select {
		case out := <-closed:
			return time.Since(start), out, nil
		case <-tick.C:
			if _, err := conn.Write([]byte{payload[i%len(payload)]}); err != nil {
				out := <-closed
				return time.Since(start), out, errTrickleClosed
			}
		case <-limit.C:
			return time.Since(start), "", errors.New("not closed within a minute")
		}
	}
}

func TestTricklingClientsClosedAtPreAuthLimit(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{Config: "\n[limits]\npre_auth_timeout = \"3s\"\n"})
	for _, c := range []struct{ proto, addr, payload, bye string }{
		{"imap", env.Daemon.IMAPAddr, "a LOGIN x y\r\n", "* BYE"},
		{"smtp", env.Daemon.SMTPAddr, "EHLO trickler.example\r\n", "421 4.4.2"},
	} {
		t.Run(c.proto, func(t *testing.T) {
			took, out, err := trickle(t, c.addr, c.payload, 500*time.Millisecond)
			if err != nil && !errors.Is(err, errTrickleClosed) {
				t.Fatal(err)
			}
			t.Logf("%s trickler closed after %v", c.proto, took.Round(10*time.Millisecond))
			if took < 3*time.Second || took > 4*time.Second {
				t.Fatalf("closed after %v, want at the 3s pre-auth limit", took)
			}
			if !strings.Contains(out, c.bye) {
				t.Fatalf("last words %q, want %q", out, c.bye)
			}
		})
	}
}
