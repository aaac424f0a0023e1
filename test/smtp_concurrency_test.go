package test

import (
	"bytes"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/test/m365sim"
)

// writeWatch signals once the first write starting with prefix has been
// handed to the kernel.
type writeWatch struct {
	net.Conn
	prefix string
	seen   chan<- struct{}
	once   sync.Once
}

func (w *writeWatch) Write(p []byte) (int, error) {
	n, err := w.Conn.Write(p)
	if err == nil && bytes.HasPrefix(p, []byte(w.prefix)) {
		w.once.Do(func() { w.seen <- struct{}{} })
	}
	return n, err
}

// senderMessage is sender i's message.
func senderMessage(i int) string {
	return fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: sender %d\r\n\r\nfrom sender %d\r\n", mailbox, mailbox, i, i)
}

// sendWaiting connects, signals authSent once its AUTH is on the wire,
// waits for AUTH's reply, then sends sender i's message. It runs off the
// test's goroutine, so it returns errors.
func sendWaiting(addr, password string, i int, authSent chan<- struct{}) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(time.Minute))
	c := smtp.NewClient(&writeWatch{Conn: conn, prefix: "AUTH ", seen: authSent})
	defer c.Close()
	if err := c.Hello("sender.test"); err != nil {
		return fmt.Errorf("sender %d: EHLO: %w", i, err)
	}
	if err := c.Auth(sasl.NewPlainClient("", mailbox, password)); err != nil {
		return fmt.Errorf("sender %d: AUTH: %w", i, err)
	}
	if err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader(senderMessage(i))); err != nil {
		return fmt.Errorf("sender %d: sending: %w", i, err)
	}
	return c.Quit()
}

// TestSMTPConnectionCapPerMailbox: ten senders of one mailbox at once, with
// broker's default cap of 3 upstream connections per mailbox. Three
// sessions authenticate and hold their connections while seven more send
// AUTH; then the three send and leave, and the seven follow through the
// freed connections. All ten messages arrive, and upstream never sees
// more than three sessions of the mailbox at once. The simulator is set to
// allow more, so that a broken cap would show as a peak above 3 rather
// than as refusals. Without reuse each sender logs in upstream; with it,
// the seven take over connections the ones before them left, logged in.
func TestSMTPConnectionCapPerMailbox(t *testing.T) {
	t.Run("new logins", func(t *testing.T) { testConnectionCapPerMailbox(t, false) })
	t.Run("reused logins", func(t *testing.T) { testConnectionCapPerMailbox(t, true) })
}

func testConnectionCapPerMailbox(t *testing.T, reuse bool) {
	const senders, limit = 10, 3
	opts := smtpSimOptions{SMTP: m365sim.SMTPOptions{MaxConnectionsPerMailbox: 100}}
	if !reuse {
		opts.Config = `reuse_idle_timeout = "0s"`
	}
	env := newSMTPSimEnv(t, opts)
	addr := env.Daemon.SMTPAddr

	holders := make([]*smtp.Client, limit)
	for i := range holders {
		holders[i] = dialSMTP(t, addr, mailbox, env.Password)
	}
	if n := env.SMTP.Logins(); n != limit {
		t.Fatalf("upstream logins after %d AUTHs: got %d, want %d", limit, n, limit)
	}

	authSent := make(chan struct{}, senders)
	errs := make(chan error, senders)
	for i := limit; i < senders; i++ {
		go func() { errs <- sendWaiting(addr, env.Password, i, authSent) }()
	}
	timeout := time.After(smtpWait)
	for range senders - limit {
		select {
		case <-authSent:
		case err := <-errs:
			t.Fatalf("a waiting sender ended before the holders left: %v\n%s", err, env.Daemon.Log())
		case <-timeout:
			t.Fatalf("waiting senders did not send AUTH within %v", smtpWait)
		}
	}
	// Seven AUTHs are on the wire; none can be served upstream while the
	// holders keep the mailbox's three connections.
	if n := env.SMTP.Logins(); n != limit {
		t.Fatalf("upstream logins while %d connections are held: got %d, want %d", limit, n, limit)
	}

	for i, c := range holders {
		if err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader(senderMessage(i))); err != nil {
			t.Fatalf("holder %d: sending: %v", i, err)
		}
		if err := c.Quit(); err != nil {
			t.Fatalf("holder %d: QUIT: %v", i, err)
		}
	}
	for range senders - limit {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatalf("%v\n%s", err, env.Daemon.Log())
			}
		case <-time.After(time.Minute):
			t.Fatalf("waiting senders did not finish within a minute\n%s", env.Daemon.Log())
		}
	}

	msgs := env.waitMessages(t, senders)
	var subjects []string
	for _, m := range msgs {
		_, rest, _ := strings.Cut(string(m.Data), "Subject: ")
		subject, _, _ := strings.Cut(rest, "\r\n")
		subjects = append(subjects, subject)
	}
	sort.Strings(subjects)
	var want []string
	for i := range senders {
		want = append(want, fmt.Sprintf("sender %d", i))
	}
	sort.Strings(want)
	if strings.Join(subjects, ",") != strings.Join(want, ",") {
		t.Fatalf("upstream got subjects %q, want %q", subjects, want)
	}
	if n := env.SMTP.MaxConcurrent(mailbox); n != limit {
		t.Fatalf("upstream saw at most %d concurrent sessions of %s, want exactly %d", n, mailbox, limit)
	}
	n := env.SMTP.Logins()
	switch {
	case !reuse && n != senders:
		t.Fatalf("upstream logins: got %d, want %d", n, senders)
	case reuse && (n < limit || n >= senders):
		t.Fatalf("upstream logins: got %d, want from %d to %d: some senders reuse a connection another left", n, limit, senders-1)
	}
}

// TestSMTPConnectionWaitExpires: a session that gets none of its mailbox's
// upstream connections within connection_wait is told to come back later
// (454 4.3.2), and may try again once one is free.
func TestSMTPConnectionWaitExpires(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{Config: "max_connections_per_mailbox = 1\nconnection_wait = \"500ms\""})
	holder := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)

	c := dialRawSMTP(t, env.Daemon.SMTPAddr)
	c.cmd("EHLO client.test", "250 ")
	auth := "AUTH PLAIN " + b64("\x00"+mailbox+"\x00"+env.Password)
	c.cmd(auth, "454 4.3.2 ")
	if line := env.Daemon.waitLog("reason=max_connections_per_mailbox"); !strings.Contains(line, `msg="connection refused"`) || !strings.Contains(line, "account="+mailbox) {
		t.Fatalf("log line %q does not say the mailbox's connections were all taken", line)
	}
	if err := holder.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	// The holder's QUIT frees its slot before the reply (or right after it):
	// the daemon logs the session's end once it has.
	env.Daemon.waitLog("msg=\"session end\" proto=smtp")
	c.cmd(auth, "235 ")
	if n := env.SMTP.MaxConcurrent(mailbox); n != 1 {
		t.Fatalf("upstream saw %d concurrent sessions, want 1", n)
	}
}
