package test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"
)

// rawIMAP is a line-level IMAP client for comparing servers' answers.
type rawIMAP struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func newRawIMAP(t *testing.T, c net.Conn) *rawIMAP {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := &rawIMAP{t: t, c: c, br: bufio.NewReader(c)}
	if g := r.line(); !strings.HasPrefix(g, "* OK ") {
		t.Fatalf("greeting %q", g)
	}
	return r
}

func (r *rawIMAP) line() string {
	r.t.Helper()
	l, err := r.br.ReadString('\n')
	if err != nil {
		r.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (r *rawIMAP) send(s string) {
	r.t.Helper()
	if _, err := r.c.Write([]byte(s + "\r\n")); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// command sends a command and returns its responses up to and including
// the tagged one.
func (r *rawIMAP) command(tag, cmd string) []string {
	r.t.Helper()
	r.send(tag + " " + cmd)
	var out []string
	for {
		l := r.line()
		out = append(out, l)
		if strings.HasPrefix(l, tag+" ") {
			return out
		}
	}
}

// TestIMAPPreLoginFidelity compares broker's pre-login answers with a real
// Dovecot's, and logs in through broker to Dovecot with AUTHENTICATE LOGIN
// after imaptest's long ID line.
func TestIMAPPreLoginFidelity(t *testing.T) {
	env := newDovecotEnv(t)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(env.Dovecot.CACertPEM)
	host, _, _ := net.SplitHostPort(env.Dovecot.IMAPAddr)
	dc, err := tls.Dial("tcp", env.Dovecot.IMAPAddr, &tls.Config{RootCAs: pool, ServerName: host})
	if err != nil {
		t.Fatal(err)
	}
	dovecot := newRawIMAP(t, dc)
	bc, err := net.Dial("tcp", env.Daemon.IMAPAddr)
	if err != nil {
		t.Fatal(err)
	}
	brk := newRawIMAP(t, bc)

	// ENABLE before login: the same answer, word for word.
	for _, cmd := range []string{"ENABLE CONDSTORE", "ENABLE UTF8=ACCEPT IMAP4rev2", "ENABLE"} {
		want := dovecot.command("e1", cmd)
		got := brk.command("e1", cmd)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s before login: broker answers %q, Dovecot %q", cmd, got, want)
		}
	}

	// imaptest's ID test: a 31 KB line of 30 pairs.
	id := "ID (" + strings.Repeat(`"name" "`+strings.Repeat("y", 1000)+`" `, 30) + `"x" NIL)`
	for name, c := range map[string]*rawIMAP{"Dovecot": dovecot, "broker": brk} {
		if got := c.command("i1", id); !strings.HasPrefix(got[len(got)-1], "i1 OK") {
			t.Errorf("long ID line: %s answers %q", name, got)
		}
	}

	// AUTHENTICATE LOGIN through broker to Dovecot (XOAUTH2 upstream).
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	brk.send("a1 AUTHENTICATE LOGIN")
	if l := brk.line(); l != "+ "+b64("Username:") {
		t.Fatalf("first challenge %q", l)
	}
	brk.send(b64(mailbox))
	if l := brk.line(); l != "+ "+b64("Password:") {
		t.Fatalf("second challenge %q", l)
	}
	brk.send(b64(env.Password))
	if l := brk.line(); !strings.HasPrefix(l, "a1 OK ") {
		t.Fatalf("AUTHENTICATE LOGIN through broker: %q", l)
	}
	if got := brk.command("s1", "SELECT INBOX"); !strings.HasPrefix(got[len(got)-1], "s1 OK") ||
		!strings.Contains(strings.Join(got, "\n"), "* 3 EXISTS") {
		t.Fatalf("SELECT after AUTHENTICATE LOGIN: %q", got)
	}

	// With the username as initial response (SASL-IR).
	bc2, err := net.Dial("tcp", env.Daemon.IMAPAddr)
	if err != nil {
		t.Fatal(err)
	}
	brk2 := newRawIMAP(t, bc2)
	brk2.send("a1 AUTHENTICATE LOGIN " + b64(mailbox))
	if l := brk2.line(); l != "+ "+b64("Password:") {
		t.Fatalf("challenge after the initial response %q", l)
	}
	brk2.send(b64(env.Password))
	if l := brk2.line(); !strings.HasPrefix(l, "a1 OK ") {
		t.Fatalf("AUTHENTICATE LOGIN with SASL-IR through broker: %q", l)
	}
}
