package imap

import (
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// TestIMAPMailboxCap: upstream sessions per mailbox are capped; a login
// waits for a free one for ConnectionWait, then gets NO [UNAVAILABLE].
func TestIMAPMailboxCap(t *testing.T) {
	up := startStub(t, defaultStub())
	log, logs := proxytest.NewLogger(t)
	const wait = 300 * time.Millisecond
	srv, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}, Logger: log,
		MaxConnectionsPerMailbox: 1, ConnectionWait: wait}, up)
	a := dialClient(t, addr)
	a.login("alice", "pw")
	if n := srv.UpstreamConnections("alice"); n != 1 {
		t.Fatalf("alice holds %d upstream sessions, want 1", n)
	}

	b := dialClient(t, addr)
	b.greet()
	start := time.Now()
	b.Send("b LOGIN alice pw\r\n")
	b.Expect("b NO [UNAVAILABLE] Too many connections for this mailbox, try again later")
	if took := time.Since(start); took < wait {
		t.Fatalf("refused after %v, before the wait of %v", took, wait)
	}
	// Another mailbox is not held up.
	c := dialClient(t, addr)
	c.login("carol", "pw")

	// A login waiting in the queue gets the place a logout frees.
	b.Send("b2 LOGIN alice pw\r\n")
	a.Send("a LOGOUT\r\n")
	a.Expect("* BYE")
	b.Expect("b2 OK [CAPABILITY")

	if st := srv.Stats(); st.RefusedPerMailbox != 1 {
		t.Fatalf("Stats %+v, want 1 refusal per mailbox", st)
	}
	out := logs.String()
	if n := strings.Count(out, "connection refused"); n != 1 || !strings.Contains(out, "reason=max_connections_per_mailbox remote=127.0.0.1:") {
		t.Fatalf("want one refusal line for the mailbox:\n%s", out)
	}
	if strings.Contains(out, "login failed") || strings.Contains(out, "upstream login failed") {
		t.Fatalf("the refusal is logged more than once:\n%s", out)
	}
	b.Conn.Close()
	c.Conn.Close()
	proxytest.WaitFor(t, "sessions to end", func() bool { return srv.Sessions() == 0 })
	if n := srv.UpstreamConnections("alice"); n != 0 {
		t.Fatalf("alice holds %d upstream sessions after all ended", n)
	}
}
