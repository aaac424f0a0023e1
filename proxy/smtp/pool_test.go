package smtp

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// keptIdle returns how many upstream connections of account wait for
// reuse.
func keptIdle(srv *Server, account string) int {
	srv.pool.mu.Lock()
	defer srv.pool.mu.Unlock()
	return len(srv.pool.idleConns[poolKey{account: account}])
}

// waitKept waits until n connections of account wait for reuse.
func waitKept(t *testing.T, srv *Server, account string, n int) {
	t.Helper()
	proxytest.WaitFor(t, "kept upstream connections", func() bool { return keptIdle(srv, account) == n })
}

// waitUpstreamGone waits until upstream has no session of user left.
func waitUpstreamGone(t *testing.T, up *smtpStub, user string) {
	t.Helper()
	if err := up.waitErr("upstream sessions of "+user+" to end", func() bool { return up.active[user] == 0 }); err != nil {
		t.Fatal(err)
	}
}

// sendOnce runs one client session: AUTH as user, one message, QUIT.
func sendOnce(t *testing.T, addr, user string) {
	t.Helper()
	c := dialSMTP(t, addr)
	if err := c.Auth(sasl.NewPlainClient("", user, "secret")); err != nil {
		t.Fatalf("AUTH as %s: %v", user, err)
	}
	if err := send(c, user, []string{recipient}, testMessage); err != nil {
		t.Fatalf("send as %s: %v", user, err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
}

// expiringAuth hands out tokens that expire ttl from now.
type expiringAuth struct {
	*smtpStubAuth
	ttl time.Duration
}

func (a expiringAuth) Authenticate(ctx context.Context, l *proxy.Login) (*proxy.Upstream, error) {
	up, err := a.smtpStubAuth.Authenticate(ctx, l)
	if up != nil {
		up.Expires = time.Now().Add(a.ttl)
	}
	return up, err
}

// TestSMTPReuseSameMailbox: a sender that opens a connection per message
// logs in upstream once. With one connection per mailbox and a short
// wait, the second session gets the kept connection rather than waiting
// for the slot it holds.
func TestSMTPReuseSameMailbox(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, logs := startSMTPProxy(t, Options{MaxConnectionsPerMailbox: 1, ConnectionWait: 100 * time.Millisecond}, up, nil)
	sendOnce(t, addr, sender)
	waitKept(t, srv, sender, 1)
	if n := srv.UpstreamConnections(sender); n != 1 {
		t.Fatalf("upstream connections while kept: got %d, want 1 (a kept connection holds its slot)", n)
	}
	sendOnce(t, addr, sender)
	if n := up.auths.Load(); n != 1 {
		t.Fatalf("upstream saw %d AUTH, want 1", n)
	}
	if n := len(up.received()); n != 2 {
		t.Fatalf("upstream got %d messages, want 2", n)
	}
	if !strings.Contains(logs.String(), "upstream session reused") {
		t.Fatalf("log does not say the session was reused:\n%s", logs)
	}
	waitKept(t, srv, sender, 1)
}

// TestSMTPReuseNeverAcrossMailboxes: a connection authenticated as one
// mailbox is never handed to a login of another.
func TestSMTPReuseNeverAcrossMailboxes(t *testing.T) {
	const other = "carol@example.com"
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	sendOnce(t, addr, sender)
	waitKept(t, srv, sender, 1)
	sendOnce(t, addr, other)
	if n := up.auths.Load(); n != 2 {
		t.Fatalf("upstream saw %d AUTH, want 2: one per mailbox", n)
	}
	got := up.received()
	if len(got) != 2 || got[0].user != sender || got[1].user != other {
		t.Fatalf("upstream got %+v, want one message from each mailbox, each on its own login", got)
	}
	waitKept(t, srv, other, 1)
	if n := keptIdle(srv, sender); n != 1 {
		t.Fatalf("kept connections of %s: got %d, want 1", sender, n)
	}
}

// TestSMTPReuseAfterUpstreamClosedIt: a kept connection that upstream
// closed meanwhile fails its check; the session dials anew and the client
// notices nothing.
func TestSMTPReuseAfterUpstreamClosedIt(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, logs := startSMTPProxy(t, Options{}, up, nil)
	sendOnce(t, addr, sender)
	waitKept(t, srv, sender, 1)
	up.closeIdle()
	waitUpstreamGone(t, up, sender)
	sendOnce(t, addr, sender)
	if n := len(up.received()); n != 2 {
		t.Fatalf("upstream got %d messages, want 2", n)
	}
	if n := up.auths.Load(); n != 2 {
		t.Fatalf("upstream saw %d AUTH, want 2: the dead connection replaced", n)
	}
	if !strings.Contains(logs.String(), "failed its check") {
		t.Fatalf("log does not tell of the failed check:\n%s", logs)
	}
}

// TestSMTPReuseIdleTimeout: a kept connection gets QUIT after the idle
// timeout and frees its slot.
func TestSMTPReuseIdleTimeout(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, logs := startSMTPProxy(t, Options{ReuseIdleTimeout: 50 * time.Millisecond}, up, nil)
	sendOnce(t, addr, sender)
	waitUpstreamGone(t, up, sender)
	proxytest.WaitFor(t, "the slot to be freed", func() bool { return srv.UpstreamConnections(sender) == 0 })
	if !strings.Contains(logs.String(), "upstream session kept for reuse") || !strings.Contains(logs.String(), "closed after its idle time") {
		t.Fatalf("log does not tell of the connection kept, then closed:\n%s", logs)
	}
	if n := keptIdle(srv, sender); n != 0 {
		t.Fatalf("kept connections: got %d, want 0", n)
	}
}

// TestSMTPReuseTokenExpiry: a connection is kept no longer than its token
// allows, whatever the idle timeout, and not at all within tokenMargin of
// its end.
func TestSMTPReuseTokenExpiry(t *testing.T) {
	tests := []struct {
		name     string
		ttl      time.Duration
		wantKept bool
	}{
		{"expires soon after", tokenMargin + 200*time.Millisecond, true},
		{"expires within the margin", tokenMargin - time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startSMTPStub(t, &smtpStub{})
			auth := expiringAuth{newSMTPStubAuth("secret"), tt.ttl}
			srv, addr, logs := startSMTPProxy(t, Options{Auth: auth, ReuseIdleTimeout: time.Hour}, up, nil)
			sendOnce(t, addr, sender)
			waitUpstreamGone(t, up, sender)
			proxytest.WaitFor(t, "the slot to be freed", func() bool { return srv.UpstreamConnections(sender) == 0 })
			if got := strings.Contains(logs.String(), "upstream session kept for reuse"); got != tt.wantKept {
				t.Fatalf("connection kept: got %v, want %v\n%s", got, tt.wantKept, logs)
			}
		})
	}
}

// TestSMTPReuseWakesWaiter: a session waiting for its mailbox's only slot
// takes the connection the session holding it leaves, without waiting
// for the connection's idle timeout.
func TestSMTPReuseWakesWaiter(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, _ := startSMTPProxy(t, Options{MaxConnectionsPerMailbox: 1, ConnectionWait: 10 * time.Second}, up, nil)
	first := loginSMTP(t, addr)
	second := dialSMTP(t, addr)
	authed := make(chan error, 1)
	go func() { authed <- second.Auth(sasl.NewPlainClient("", sender, "secret")) }()
	proxytest.WaitFor(t, "the second login to wait for the slot", func() bool {
		srv.pool.mu.Lock()
		defer srv.pool.mu.Unlock()
		return len(srv.pool.waiters[poolKey{account: sender}]) == 1
	})
	if err := send(first, sender, []string{recipient}, testMessage); err != nil {
		t.Fatal(err)
	}
	if err := first.Quit(); err != nil {
		t.Fatal(err)
	}
	if err := <-authed; err != nil {
		t.Fatalf("AUTH waiting for the slot: %v", err)
	}
	if err := send(second, sender, []string{recipient}, testMessage); err != nil {
		t.Fatal(err)
	}
	if n := up.auths.Load(); n != 1 {
		t.Fatalf("upstream saw %d AUTH, want 1", n)
	}
	if n := up.peakOf(sender); n != 1 {
		t.Fatalf("upstream saw %d concurrent sessions, want 1", n)
	}
}

// TestSMTPReuseAfterOpenTransaction: a client that leaves after RCPT
// without DATA leaves a transaction open upstream; it is reset before the
// connection is kept, so the next session's MAIL is not a nested one.
func TestSMTPReuseAfterOpenTransaction(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, logs := startSMTPProxy(t, Options{}, up, nil)
	c := loginSMTP(t, addr)
	if err := c.Mail(sender, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(recipient, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	waitKept(t, srv, sender, 1)
	if !strings.Contains(logs.String(), "reset and kept") {
		t.Fatalf("log does not tell of the reset:\n%s", logs)
	}
	sendOnce(t, addr, sender)
	if n := up.auths.Load(); n != 1 {
		t.Fatalf("upstream saw %d AUTH, want 1", n)
	}
	if got := up.received(); len(got) != 1 || len(got[0].to) != 1 {
		t.Fatalf("upstream got %+v, want one message with one recipient", got)
	}
}

// TestSMTPReuseNotAfterTrouble: a session that ends badly leaves nothing to
// reuse: upstream lost during DATA, a client gone mid-DATA, a 421.
func TestSMTPReuseNotAfterTrouble(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\r\n"), 20000)
	tests := []struct {
		name string
		run  func(t *testing.T, up *smtpStub, addr string)
	}{
		{"upstream lost during DATA", func(t *testing.T, up *smtpStub, addr string) {
			c := loginSMTP(t, addr)
			up.dropAfter.Store(64 << 10)
			if err := send(c, sender, []string{recipient}, big); smtpCode(err) != "451 4.4.2" {
				t.Fatalf("DATA with upstream gone: got %v, want 451 4.4.2", err)
			}
			c.Quit()
		}},
		{"client gone during DATA", func(t *testing.T, up *smtpStub, addr string) {
			c := loginSMTP(t, addr)
			if err := c.Mail(sender, nil); err != nil {
				t.Fatal(err)
			}
			if err := c.Rcpt(recipient, nil); err != nil {
				t.Fatal(err)
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			w.Write(big[:4096])
			c.Close()
		}},
		{"421 from upstream", func(t *testing.T, up *smtpStub, addr string) {
			c := loginSMTP(t, addr)
			if err := c.Mail(sender, nil); err != nil {
				t.Fatal(err)
			}
			// The stub answers this recipient with 421.
			if err := c.Rcpt("hangup@example.net", nil); smtpCode(err) != "421 4.4.2" {
				t.Fatalf("RCPT: got %v, want upstream's 421 4.4.2", err)
			}
			c.Close()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startSMTPStub(t, &smtpStub{})
			srv, addr, _ := startSMTPProxy(t, Options{}, up, nil)
			tt.run(t, up, addr)
			proxytest.WaitFor(t, "the session to end", func() bool { return srv.Sessions() == 0 })
			proxytest.WaitFor(t, "the slot to be freed", func() bool { return srv.UpstreamConnections(sender) == 0 })
			if n := keptIdle(srv, sender); n != 0 {
				t.Fatalf("kept connections: got %d, want 0", n)
			}
			auths := up.auths.Load()
			sendOnce(t, addr, sender)
			if n := up.auths.Load(); n != auths+1 {
				t.Fatalf("upstream AUTH after the trouble: got %d more, want 1", n-auths)
			}
		})
	}
}

// TestSMTPShutdownQuitsKept: Shutdown does not wait for kept connections,
// and quits them.
func TestSMTPShutdownQuitsKept(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	sendOnce(t, addr, sender)
	waitKept(t, srv, sender, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitUpstreamGone(t, up, sender)
	proxytest.WaitFor(t, "the slot to be freed", func() bool { return srv.UpstreamConnections(sender) == 0 })
}

// TestSMTPRetireStopsReuse: a server that a reload replaced quits its kept
// connections and keeps no more.
func TestSMTPRetireStopsReuse(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	sendOnce(t, addr, sender)
	waitKept(t, srv, sender, 1)
	srv.Retire()
	waitUpstreamGone(t, up, sender)
	sendOnce(t, addr, sender)
	proxytest.WaitFor(t, "the session to end", func() bool { return srv.Sessions() == 0 })
	waitUpstreamGone(t, up, sender)
	if n := keptIdle(srv, sender); n != 0 {
		t.Fatalf("kept connections after Retire: got %d, want 0", n)
	}
}

// TestSMTPReuseBounded: at most maxKeptPerMailbox connections of a
// mailbox wait for reuse; the others get QUIT.
func TestSMTPReuseBounded(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, _ := startSMTPProxy(t, Options{MaxConnectionsPerMailbox: maxKeptPerMailbox + 1}, up, nil)
	var clients []*proxytest.Client
	for range maxKeptPerMailbox + 1 {
		c := ehloClient(t, addr)
		c.Send("AUTH PLAIN " + proxytest.B64("\x00"+sender+"\x00secret") + "\r\n")
		c.Expect("235 ")
		clients = append(clients, c)
	}
	for _, c := range clients {
		c.Send("QUIT\r\n")
		c.Expect("221 ")
	}
	proxytest.WaitFor(t, "the sessions to end", func() bool { return srv.Sessions() == 0 })
	waitKept(t, srv, sender, maxKeptPerMailbox)
	if err := up.waitErr("one upstream session to end", func() bool { return up.active[sender] == maxKeptPerMailbox }); err != nil {
		t.Fatal(err)
	}
}
