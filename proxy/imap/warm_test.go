package imap

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

func startWarmProxy(t *testing.T, up *stubUpstream) (*Server, string) {
	t.Helper()
	return startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}, WarmConnections: 2}, up)
}

// warmCounter counts the warm pool's hits and misses.
type warmCounter struct {
	proxy.NopObserver
	hits, misses atomic.Int32
}

func (w *warmCounter) UpstreamWarm(_ proxy.Protocol, hit bool) {
	if hit {
		w.hits.Add(1)
	} else {
		w.misses.Add(1)
	}
}

// TestIMAPWarmLogin: after a login, a connection is parked, and the next
// login logs in on it, a connection accepted before that login began;
// taking it dials its replacement.
func TestIMAPWarmLogin(t *testing.T) {
	up := startStub(t, defaultStub())
	obs := &warmCounter{}
	srv, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}, WarmConnections: 2, Observer: obs}, up)
	first := dialClient(t, addr)
	first.greet()
	if n := up.accepted.Load(); n != 0 {
		t.Fatalf("%d upstream connections before any login", n)
	}
	first.Send("L1 LOGIN alice pw\r\n")
	first.Expect("L1 OK [CAPABILITY ")
	proxytest.WaitFor(t, "a warm connection", func() bool { return srv.Warm.Parked() == 1 })
	warm := onlyPreAuth(t, up)

	c := dialClient(t, addr)
	c.login("alice", "pw")
	if got := up.lastAuth.Load(); got != warm {
		t.Fatalf("the login used upstream connection %d, want the warm one, %d", got, warm)
	}
	c.Send("a NOOP\r\n")
	c.Expect("a OK NOOP done by stub")
	proxytest.WaitFor(t, "the warm connection's replacement", func() bool { return srv.Warm.Parked() == 1 })
	if n := up.accepted.Load(); n != 3 {
		t.Fatalf("%d upstream connections after two logins, want 3", n)
	}
	if h, m := obs.hits.Load(), obs.misses.Load(); h != 1 || m != 1 {
		t.Fatalf("observed %d warm hits and %d misses, want 1 and 1", h, m)
	}
}

// onlyPreAuth returns the number of upstream's one connection not logged in.
func onlyPreAuth(t *testing.T, up *stubUpstream) int32 {
	t.Helper()
	ns := up.preAuth()
	if len(ns) != 1 {
		t.Fatalf("upstream connections not logged in: %v, want one", ns)
	}
	return ns[0]
}

// TestIMAPWarmDeadConnection: a parked connection that upstream closed is
// not used; the login succeeds on another.
func TestIMAPWarmDeadConnection(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr := startWarmProxy(t, up)
	dialClient(t, addr).login("alice", "pw")
	proxytest.WaitFor(t, "a warm connection", func() bool { return srv.Warm.Parked() == 1 })
	dead := onlyPreAuth(t, up)
	if n := up.closePreAuth(); n != 1 {
		t.Fatalf("closed %d upstream connections, want the warm one", n)
	}
	c := dialClient(t, addr)
	c.login("alice", "pw")
	if got := up.lastAuth.Load(); got <= 2 {
		t.Fatalf("the login used upstream connection %d, want one opened after the closed one, %d", got, dead)
	}
	c.Send("a NOOP\r\n")
	c.Expect("a OK NOOP done by stub")
}

// TestIMAPWarmFailedLogins: logins refused locally neither dial upstream
// nor take or grow the pool.
func TestIMAPWarmFailedLogins(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr := startWarmProxy(t, up)
	c := dialClient(t, addr)
	c.greet()
	for i := range 2 {
		c.Send("a LOGIN alice wrong\r\n")
		c.Expect("a NO [AUTHENTICATIONFAILED]")
		if i == 0 {
			c.Send("b LOGIN unknown pw\r\n")
			c.Expect("b NO [AUTHENTICATIONFAILED]")
		}
	}
	c.Expect("* BYE Too many failures")
	c.ExpectClosed()
	if n, parked := up.accepted.Load(), srv.Warm.Parked(); n != 0 || parked != 0 {
		t.Fatalf("failed logins opened %d upstream connections, %d parked", n, parked)
	}
	// One good login then parks one.
	dialClient(t, addr).login("alice", "pw")
	proxytest.WaitFor(t, "a warm connection", func() bool { return srv.Warm.Parked() == 1 })
	warm := up.accepted.Load()
	for range 3 {
		bad := dialClient(t, addr)
		bad.greet()
		bad.Send("a LOGIN alice wrong\r\n")
		bad.Expect("a NO [AUTHENTICATIONFAILED]")
	}
	if n, parked := up.accepted.Load(), srv.Warm.Parked(); n != warm || parked != 1 {
		t.Fatalf("failed logins: %d upstream connections and %d parked, want %d and 1", n, parked, warm)
	}
}

// TestIMAPWarmShutdown: Shutdown closes the parked connections.
func TestIMAPWarmShutdown(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr := startWarmProxy(t, up)
	c := dialClient(t, addr)
	c.login("alice", "pw")
	proxytest.WaitFor(t, "a warm connection", func() bool { return srv.Warm.Parked() == 1 })
	c.Send("z LOGOUT\r\n")
	c.Expect("* BYE")
	c.Expect("z OK")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := srv.Warm.Parked(); n != 0 {
		t.Fatalf("%d connections parked after Shutdown", n)
	}
	proxytest.WaitFor(t, "upstream to see every connection closed", func() bool { n, _ := up.open(); return n == 0 })
}
