package pop3

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// TestPOP3WarmLogin: after a login a connection is parked, greeted and
// asked for CAPA; the next login logs in on it, and Shutdown closes the
// one parked after it.
func TestPOP3WarmLogin(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr, _ := startProxy(t, Options{WarmConnections: 1}, up)
	c := dial(t, addr)
	c.Send("USER alice@example.com\r\n")
	c.Expect("+OK")
	c.Send("PASS wrong\r\n")
	c.Expect("-ERR [AUTH]")
	if n := srv.Warm.Parked(); n != 0 {
		t.Fatalf("a failed login parked %d connections", n)
	}
	c.Send("USER alice@example.com\r\n")
	c.Expect("+OK")
	c.Send("PASS pw\r\n")
	c.Expect("+OK")
	proxytest.WaitFor(t, "a warm connection", func() bool { return srv.Warm.Parked() == 1 })
	// The probe at start-up has quit; the warm connection is the only one
	// not logged in.
	proxytest.WaitFor(t, "the probe to end", func() bool { return len(up.PreAuth()) == 1 })
	warm := up.PreAuth()[0]

	c2 := dial(t, addr)
	c2.Send("USER alice@example.com\r\n")
	c2.Expect("+OK")
	c2.Send("PASS pw\r\n")
	c2.Expect("+OK")
	if got := up.LastLogin(); got != warm {
		t.Fatalf("the login used upstream connection %d, want the warm one, %d", got, warm)
	}
	c2.Send("STAT\r\n")
	c2.Expect("+OK 2 ")
	proxytest.WaitFor(t, "the warm connection's replacement", func() bool { return srv.Warm.Parked() == 1 })
	parked := up.PreAuth()
	if len(parked) != 1 || slices.Contains(parked, warm) {
		t.Fatalf("upstream connections not logged in: %v, want one new one", parked)
	}
	for _, cl := range []*proxytest.Client{c, c2} {
		cl.Send("QUIT\r\n")
		cl.Expect("+OK")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	proxytest.WaitFor(t, "the warm connection to close", func() bool { return len(up.PreAuth()) == 0 })
}
