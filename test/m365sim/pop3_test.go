package m365sim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

const popScope = "https://outlook.office.com/POP.AccessAsUser.All"

// newPOP3 starts an IMAP service with alice's and bob's mailboxes and a
// POP3 service over it.
func newPOP3(t *testing.T, f *fixture, opts POP3Options) (*POP3, *IMAP) {
	t.Helper()
	m := newIMAP(t, f.e)
	s, err := NewPOP3(f.e, m, opts)
	if err != nil {
		t.Fatalf("NewPOP3: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, m
}

// popAppToken is a client credentials token of an app with POP.AccessAsApp
// and FullAccess to alice.
func popAppToken(t *testing.T, f *fixture) string {
	t.Helper()
	f.e.AddApp(App{Tenant: domain, ClientID: confID, Secret: secret, Roles: []string{"IMAP.AccessAsApp", "POP.AccessAsApp"}, Mailboxes: []string{alice}})
	return appAccessToken(t, f)
}

func popUserToken(t *testing.T, f *fixture, upn, password string) string {
	t.Helper()
	return f.token(t, domain, ropc(upn, password, popScope)).AccessToken
}

// popConn speaks POP3 by hand.
type popConn struct {
	t    *testing.T
	conn *tls.Conn
	r    *bufio.Reader
}

func dialPOP3(t *testing.T, s *POP3) *popConn {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatalf("CACertPEM: no certificate")
	}
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := &popConn{t: t, conn: conn, r: bufio.NewReader(conn)}
	if g := c.line(); !strings.HasPrefix(g, "+OK The Microsoft Exchange POP3 service is ready. [") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

func (c *popConn) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line %q lacks CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (c *popConn) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("writing: %v", err)
	}
}

// cmd sends a command and returns the one-line reply.
func (c *popConn) cmd(line string) string {
	c.t.Helper()
	c.send(line)
	return c.line()
}

// expect sends a command and fails unless the reply is want.
func (c *popConn) expect(line, want string) {
	c.t.Helper()
	if got := c.cmd(line); got != want {
		c.t.Fatalf("%.40s: got %q, want %q", line, got, want)
	}
}

// multi sends a command and returns the body of its multi-line reply,
// undoing the dot-stuffing.
func (c *popConn) multi(line string) []byte {
	c.t.Helper()
	if first := c.cmd(line); !strings.HasPrefix(first, "+OK") {
		c.t.Fatalf("%s: got %q, want +OK", line, first)
	}
	var body bytes.Buffer
	for {
		l, err := c.r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			c.t.Fatalf("%s: reading: %v", line, err)
		}
		if string(l) == ".\r\n" {
			return body.Bytes()
		}
		if l[0] == '.' {
			l = l[1:]
		}
		body.Write(l)
		for errors.Is(err, bufio.ErrBufferFull) {
			l, err = c.r.ReadSlice('\n')
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				c.t.Fatalf("%s: reading: %v", line, err)
			}
			body.Write(l)
		}
	}
}

func (c *popConn) lines(line string) []string {
	c.t.Helper()
	return strings.Split(strings.TrimSuffix(string(c.multi(line)), "\r\n"), "\r\n")
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// auth logs in with AUTH XOAUTH2, "+ " and the response on its own line,
// as Microsoft documents it, and returns the final reply; an error
// challenge is answered with an empty line and returned as challenge.
func (c *popConn) auth(mailbox, token string) (reply, challenge string) {
	c.t.Helper()
	c.expect("AUTH XOAUTH2", "+ ")
	reply = c.cmd(b64(string(xoauth2.Response(mailbox, token))))
	if strings.HasPrefix(reply, "+ ") {
		challenge = reply
		reply = c.cmd("")
	}
	return reply, challenge
}

func (c *popConn) login(mailbox, token string) {
	c.t.Helper()
	if reply, _ := c.auth(mailbox, token); reply != "+OK User successfully authenticated." {
		c.t.Fatalf("AUTH XOAUTH2 %s: got %q", mailbox, reply)
	}
}

func (c *popConn) eof() {
	c.t.Helper()
	if l, err := c.r.ReadString('\n'); err != io.EOF {
		c.t.Fatalf("got %q, %v; want EOF", l, err)
	}
}

func TestPOP3GreetingAndCapa(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{})
	c := dialPOP3(t, s)
	g := pop3Greeting()
	enc := strings.TrimSuffix(strings.TrimPrefix(g, "+OK The Microsoft Exchange POP3 service is ready. ["), "]")
	u16, err := base64.StdEncoding.DecodeString(enc)
	if err != nil || len(u16) != 2*len(pop3Host) {
		t.Fatalf("greeting %q: %v", g, err)
	}
	for i := range pop3Host {
		if u16[2*i] != pop3Host[i] || u16[2*i+1] != 0 {
			t.Fatalf("greeting %q: not UTF-16LE of %s", g, pop3Host)
		}
	}
	want := []string{"TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER"}
	if got := c.lines("CAPA"); !slices.Equal(got, want) {
		t.Fatalf("CAPA: got %q, want %q", got, want)
	}
	for _, cmd := range []string{"STAT", "LIST", "RETR 1", "TOP 1 0", "UIDL", "DELE 1", "RSET", "NOOP", "STLS", "PASS x"} {
		c.expect(cmd, "-ERR Command is not valid in this state.")
	}
	c.expect("XYZZY", "-ERR Unknown command.")
	c.expect("", "-ERR Unknown command.")
	c.login(alice, popAppToken(t, f))
	if got := c.lines("capa"); !slices.Equal(got, want) {
		t.Fatalf("CAPA after login: got %q, want %q", got, want)
	}
	for _, cmd := range []string{"USER alice", "PASS x", "AUTH XOAUTH2", "STLS"} {
		c.expect(cmd, "-ERR Command is not valid in this state.")
	}
	c.expect("QUIT", "+OK Microsoft Exchange Server POP3 server signing off.")
	c.eof()
}

func TestPOP3Login(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{})
	t.Run("app token", func(t *testing.T) {
		c := dialPOP3(t, s)
		c.login(alice, popAppToken(t, f))
		c.expect("STAT", fmt.Sprintf("+OK 3 %d", totalSize(t, s, alice)))
	})
	t.Run("user token, initial response on the AUTH line", func(t *testing.T) {
		c := dialPOP3(t, s)
		ir := b64(string(xoauth2.Response("BOB@contoso.onmicrosoft.com", popUserToken(t, f, bob, "bob's password"))))
		c.expect("auth xoauth2 "+ir, "+OK User successfully authenticated.")
		c.expect("STAT", fmt.Sprintf("+OK 3 %d", totalSize(t, s, bob)))
	})
	t.Run("delegate", func(t *testing.T) {
		f.e.AddDelegate(domain, alice, bob)
		c := dialPOP3(t, s)
		c.login(alice, popUserToken(t, f, bob, "bob's password"))
	})
	if got := s.Logins(); got != 3 {
		t.Fatalf("Logins: got %d, want 3", got)
	}
}

func totalSize(t *testing.T, s *POP3, mailbox string) int {
	t.Helper()
	msgs, err := s.Messages(mailbox)
	if err != nil {
		t.Fatalf("Messages(%s): %v", mailbox, err)
	}
	n := 0
	for _, m := range msgs {
		n += len(m)
	}
	return n
}

func TestPOP3AuthFailures(t *testing.T) {
	f := newFixture(t)
	s, m := newPOP3(t, f, POP3Options{})
	const noPOP = "a0000000-0000-4000-8000-000000000003"
	f.e.AddApp(App{Tenant: domain, ClientID: noPOP, Secret: secret, Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{alice}})
	imapOnly := f.token(t, domain, form("grant_type", "client_credentials", "client_id", noPOP, "client_secret", secret, "scope", outlookDef)).AccessToken
	good := popAppToken(t, f)
	graphTok := f.token(t, domain, form("grant_type", "client_credentials", "client_id", confID, "client_secret", secret, "scope", "https://graph.microsoft.com/.default")).AccessToken
	userIMAP := f.token(t, domain, ropc(alice, alicePass, userScope)).AccessToken
	if err := m.AddMailbox("carol@contoso.onmicrosoft.com"); err != nil {
		t.Fatal(err)
	}
	f.e.AddUser(domain, "carol@contoso.onmicrosoft.com", "carol's password")
	carol := popUserToken(t, f, "carol@contoso.onmicrosoft.com", "carol's password")
	s.SetPOPEnabled("Carol@contoso.onmicrosoft.com", false)
	dave := "dave@contoso.onmicrosoft.com"
	f.e.AddUser(domain, dave, "dave's password")

	tests := []struct {
		name, mailbox, token string
		want                 error
	}{
		{"garbage token", alice, "not-a-jwt", ErrTokenMalformed},
		{"forged signature", alice, good[:len(good)-4] + "AAAA", ErrTokenSignature},
		{"app without POP role", alice, imapOnly, ErrTokenNoPermission},
		{"app, other mailbox", bob, good, ErrNoMailboxAccess},
		{"user token without POP scope", alice, userIMAP, ErrTokenNoPermission},
		{"user token, other mailbox", bob, popUserToken(t, f, alice, alicePass), ErrNoMailboxAccess},
		{"graph audience", alice, graphTok, ErrTokenAudience},
		{"POP disabled for the mailbox", "carol@contoso.onmicrosoft.com", carol, ErrPOPDisabled},
		{"no mailbox", dave, popUserToken(t, f, dave, "dave's password"), ErrUnknownMailbox},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialPOP3(t, s)
			reply, challenge := c.auth(tt.mailbox, tt.token)
			if reply != "-ERR Authentication failure: unknown user name or bad password." {
				t.Fatalf("got %q", reply)
			}
			if want := "+ " + b64(xoauth2.DefaultErrorChallenge); challenge != want {
				t.Fatalf("error challenge: got %q, want %q", challenge, want)
			}
			if err := s.LastAuthError(); !errors.Is(err, tt.want) {
				t.Fatalf("LastAuthError: got %v, want %v", err, tt.want)
			}
			// Still in AUTHORIZATION, and a good login may follow.
			c.expect("STAT", "-ERR Command is not valid in this state.")
			c.login(alice, good)
		})
	}

	t.Run("POP enabled again", func(t *testing.T) {
		s.SetPOPEnabled("carol@contoso.onmicrosoft.com", true)
		dialPOP3(t, s).login("carol@contoso.onmicrosoft.com", carol)
	})
	t.Run("expired token", func(t *testing.T) {
		f.clock.Add(DefaultTokenLifetime)
		defer f.clock.Add(-DefaultTokenLifetime)
		c := dialPOP3(t, s)
		if reply, _ := c.auth(alice, good); !strings.HasPrefix(reply, "-ERR Authentication failure") {
			t.Fatalf("got %q", reply)
		}
		if err := s.LastAuthError(); !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("LastAuthError: got %v", err)
		}
	})
	t.Run("challenge answered with *", func(t *testing.T) {
		c := dialPOP3(t, s)
		c.expect("AUTH XOAUTH2 "+b64(string(xoauth2.Response(alice, "not-a-jwt"))), "+ "+b64(xoauth2.DefaultErrorChallenge))
		c.expect("*", "-ERR Authentication failure: unknown user name or bad password.")
	})
	t.Run("USER and PASS", func(t *testing.T) {
		c := dialPOP3(t, s)
		c.expect("PASS secret", "-ERR Command is not valid in this state.")
		c.expect("USER "+alice, "+OK")
		c.expect("PASS "+alicePass, "-ERR Logon failure: unknown user name or bad password.")
		if err := s.LastAuthError(); !errors.Is(err, ErrPOPBasicAuth) {
			t.Fatalf("LastAuthError: got %v", err)
		}
	})
	t.Run("AUTH PLAIN", func(t *testing.T) {
		c := dialPOP3(t, s)
		c.expect("AUTH PLAIN", "+ ")
		c.expect(b64("\x00"+alice+"\x00"+alicePass), "-ERR Authentication failure: unknown user name or bad password.")
		c.expect("AUTH PLAIN "+b64("\x00"+alice+"\x00"+alicePass), "-ERR Authentication failure: unknown user name or bad password.")
		if err := s.LastAuthError(); !errors.Is(err, ErrPOPBasicAuth) {
			t.Fatalf("LastAuthError: got %v", err)
		}
	})
	t.Run("malformed AUTH", func(t *testing.T) {
		c := dialPOP3(t, s)
		c.expect("AUTH", "-ERR Protocol error.")
		c.expect("AUTH XOAUTH2 a b", "-ERR Protocol error.")
		c.expect("AUTH CRAM-MD5", "-ERR Unrecognized authentication type.")
		c.expect("AUTH XOAUTH2", "+ ")
		c.expect("*", "-ERR Authentication cancelled.")
		c.expect("AUTH XOAUTH2", "+ ")
		c.expect("!!not base64!!", "-ERR Authentication failure: unknown user name or bad password.")
		c.expect("AUTH XOAUTH2", "+ ")
		c.expect("", "-ERR Authentication failure: unknown user name or bad password.")
		c.expect("AUTH XOAUTH2 =", "-ERR Authentication failure: unknown user name or bad password.")
		c.expect("AUTH XOAUTH2 "+b64("user="+alice+"\x01\x01"), "-ERR Authentication failure: unknown user name or bad password.")
		if err := s.LastAuthError(); !errors.Is(err, xoauth2.ErrInvalidResponse) {
			t.Fatalf("LastAuthError: got %v", err)
		}
		c.login(alice, good)
	})
	t.Run("no error challenge", func(t *testing.T) {
		s2, err := NewPOP3(f.e, m, POP3Options{NoErrorChallenge: true})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		c := dialPOP3(t, s2)
		c.expect("AUTH XOAUTH2", "+ ")
		c.expect(b64(string(xoauth2.Response(alice, imapOnly))), "-ERR Authentication failure: unknown user name or bad password.")
	})
	if got := s.Logins(); got != int64(len(tests)+2) {
		t.Fatalf("Logins: got %d, want %d", got, len(tests)+2)
	}
}

// seedPOP3 replaces alice's INBOX by n numbered messages.
func seedPOP3(t *testing.T, f *fixture, s *POP3, n int) [][]byte {
	t.Helper()
	c := dialPOP3(t, s)
	c.login(alice, popAppToken(t, f))
	for i := 1; i <= 3; i++ {
		c.expect(fmt.Sprint("DELE ", i), "+OK")
	}
	c.expect("QUIT", "+OK Microsoft Exchange Server POP3 server signing off.")
	s.WaitSessions(context.Background(), 0)
	for i := 1; i <= n; i++ {
		msg := fmt.Sprintf("From: <bob@contoso.onmicrosoft.com>\r\nTo: <%s>\r\nSubject: message %d\r\n\r\nline 1 of %d\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n", alice, i, i)
		if err := s.Deliver(alice, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := s.Messages(alice)
	if err != nil || len(msgs) != n {
		t.Fatalf("Messages: %d, %v; want %d", len(msgs), err, n)
	}
	return msgs
}

func TestPOP3Transaction(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{})
	msgs := seedPOP3(t, f, s, 3)
	deletedBefore := s.Deleted()
	size := func(i ...int) int {
		n := 0
		for _, j := range i {
			n += len(msgs[j-1])
		}
		return n
	}

	c := dialPOP3(t, s)
	c.login(alice, popAppToken(t, f))
	c.expect("STAT", fmt.Sprintf("+OK 3 %d", size(1, 2, 3)))
	wantList := []string{fmt.Sprint("1 ", size(1)), fmt.Sprint("2 ", size(2)), fmt.Sprint("3 ", size(3))}
	if got := c.lines("LIST"); !slices.Equal(got, wantList) {
		t.Fatalf("LIST: got %q, want %q", got, wantList)
	}
	c.expect("LIST 2", fmt.Sprint("+OK 2 ", size(2)))
	uidls := c.lines("UIDL")
	if len(uidls) != 3 {
		t.Fatalf("UIDL: got %q", uidls)
	}
	for i, u := range uidls {
		n, id, _ := strings.Cut(u, " ")
		if n != fmt.Sprint(i+1) || len(id) == 0 || len(id) > 70 || strings.ContainsFunc(id, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			t.Fatalf("UIDL line %q", u)
		}
	}
	c.expect("UIDL 3", "+OK "+uidls[2])
	for i := 1; i <= 3; i++ {
		if got := c.multi(fmt.Sprint("RETR ", i)); !bytes.Equal(got, msgs[i-1]) {
			t.Fatalf("RETR %d: got %q, want %q", i, got, msgs[i-1])
		}
	}
	header := "From: <bob@contoso.onmicrosoft.com>\r\nTo: <" + alice + ">\r\nSubject: message 2\r\n\r\n"
	if got := string(c.multi("TOP 2 0")); got != header {
		t.Fatalf("TOP 2 0: got %q", got)
	}
	if got := string(c.multi("TOP 2 2")); got != header+"line 1 of 2\r\n.leading dot\r\n" {
		t.Fatalf("TOP 2 2: got %q", got)
	}
	if got := c.multi("TOP 2 100"); !bytes.Equal(got, msgs[1]) {
		t.Fatalf("TOP 2 100: got %q", got)
	}

	c.expect("DELE 1", "+OK")
	c.expect("DELE 1", "-ERR The specified message is out of range.")
	c.expect("RETR 1", "-ERR The specified message is out of range.")
	c.expect("LIST 1", "-ERR The specified message is out of range.")
	c.expect("STAT", fmt.Sprintf("+OK 2 %d", size(2, 3)))
	if got := c.lines("UIDL"); !slices.Equal(got, uidls[1:]) {
		t.Fatalf("UIDL after DELE: got %q, want %q", got, uidls[1:])
	}
	c.expect("RSET", "+OK")
	c.expect("STAT", fmt.Sprintf("+OK 3 %d", size(1, 2, 3)))
	c.expect("DELE 2", "+OK")
	c.expect("NOOP", "+OK")
	// Not deleted before QUIT.
	if left, _ := s.Messages(alice); len(left) != 3 {
		t.Fatalf("before QUIT: %d messages, want 3", len(left))
	}
	c.expect("QUIT", "+OK Microsoft Exchange Server POP3 server signing off.")
	c.eof()
	if err := s.WaitSessions(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	left, err := s.Messages(alice)
	if err != nil || len(left) != 2 || !bytes.Equal(left[0], msgs[0]) || !bytes.Equal(left[1], msgs[2]) {
		t.Fatalf("after QUIT: %d messages, %v; want messages 1 and 3", len(left), err)
	}
	if got := s.Deleted() - deletedBefore; got != 1 {
		t.Fatalf("Deleted: got %d, want 1", got)
	}

	// UIDs are stable across sessions.
	c = dialPOP3(t, s)
	c.login(alice, popAppToken(t, f))
	if got, want := c.lines("UIDL"), []string{"1 " + strings.Fields(uidls[0])[1], "2 " + strings.Fields(uidls[2])[1]}; !slices.Equal(got, want) {
		t.Fatalf("UIDL in the next session: got %q, want %q", got, want)
	}
}

func TestPOP3DropDeletesNothing(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{})
	msgs := seedPOP3(t, f, s, 3)
	deletedBefore := s.Deleted()
	c := dialPOP3(t, s)
	c.login(alice, popAppToken(t, f))
	for i := 1; i <= 3; i++ {
		c.multi(fmt.Sprint("RETR ", i))
		c.expect(fmt.Sprint("DELE ", i), "+OK")
	}
	c.expect("STAT", "+OK 0 0")
	c.conn.Close()
	if err := s.WaitSessions(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	left, err := s.Messages(alice)
	if err != nil || len(left) != 3 {
		t.Fatalf("after a dropped connection: %d messages, %v; want 3", len(left), err)
	}
	for i := range msgs {
		if !bytes.Equal(left[i], msgs[i]) {
			t.Fatalf("message %d changed", i+1)
		}
	}
	if got := s.Deleted() - deletedBefore; got != 0 {
		t.Fatalf("Deleted: got %d, want 0", got)
	}

	// Nor does a QUIT before login, nor Close.
	c = dialPOP3(t, s)
	c.login(alice, popAppToken(t, f))
	c.expect("DELE 1", "+OK")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c.eof()
	if s.Sessions() != 0 || s.Deleted() != deletedBefore {
		t.Fatalf("after Close: %d sessions, %d deleted", s.Sessions(), s.Deleted()-deletedBefore)
	}
}

func TestPOP3SharesIMAPMailbox(t *testing.T) {
	f := newFixture(t)
	s, m := newPOP3(t, f, POP3Options{})
	seedPOP3(t, f, s, 2)
	ic := login(t, m, alice, popAppToken(t, f))
	appended := []byte("From: <x@example.com>\r\nSubject: appended over IMAP\r\n\r\nhi\r\n")
	if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	cmd := ic.Append("INBOX", int64(len(appended)), nil)
	cmd.Write(appended)
	cmd.Close()
	if _, err := cmd.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}

	c := dialPOP3(t, s)
	c.login(alice, popAppToken(t, f))
	c.expect("STAT", fmt.Sprintf("+OK 3 %d", totalSize(t, s, alice)))
	if got := c.multi("RETR 3"); !bytes.Equal(got, appended) {
		t.Fatalf("RETR 3: got %q", got)
	}
	// RETR marked it read, TOP left message 2 unread.
	c.multi("TOP 2 0")
	flags, err := ic.Fetch(imap.SeqSetNum(2, 3), &imap.FetchOptions{Flags: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(flags[0].Flags, imap.FlagSeen) || !slices.Contains(flags[1].Flags, imap.FlagSeen) {
		t.Fatalf("flags after TOP 2 and RETR 3: %v, %v", flags[0].Flags, flags[1].Flags)
	}
	// A message IMAP expunges meanwhile is gone for POP3 too; the listing
	// stays as it was at login.
	stat := c.cmd("STAT")
	if err := ic.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := ic.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	c.expect("RETR 1", "-ERR The specified message is out of range.")
	c.expect("STAT", stat)
	c.expect("DELE 2", "+OK")
	c.expect("QUIT", "+OK Microsoft Exchange Server POP3 server signing off.")
	s.WaitSessions(context.Background(), 0)
	sel, err := ic.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("IMAP after QUIT: %v messages, %v; want 1", sel, err)
	}
}

func TestPOP3LargeMessage(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{})
	seedPOP3(t, f, s, 0)
	// Lines that start with dots, and a last line without CRLF.
	line := []byte(".0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\r\n")
	body := bytes.Repeat(line, 10<<20/len(line))
	msg := append([]byte("From: <bob@contoso.onmicrosoft.com>\r\nSubject: big\r\n\r\n"), body...)
	msg = append(msg, "no line end"...)
	if err := s.Deliver(alice, msg); err != nil {
		t.Fatal(err)
	}
	c := dialPOP3(t, s)
	c.login(alice, popAppToken(t, f))
	c.expect("LIST 1", fmt.Sprint("+OK 1 ", len(msg)))
	got := c.multi("RETR 1")
	if want := append(bytes.Clone(msg), "\r\n"...); !bytes.Equal(got, want) {
		t.Fatalf("RETR: got %d bytes, want %d", len(got), len(want))
	}
	c.expect("QUIT", "+OK Microsoft Exchange Server POP3 server signing off.")
}

func TestPOP3Malformed(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{})
	c := dialPOP3(t, s)
	c.expect("NOOP "+strings.Repeat("x", 600), "-ERR Command too long.")
	c.expect("CAPA x", "-ERR Protocol error.")
	c.expect("USER", "-ERR Protocol error.")
	c.expect("\x00\xff\x01", "-ERR Unknown command.")
	c.login(alice, popAppToken(t, f))
	for _, tc := range []struct{ cmd, want string }{
		{"RETR", "-ERR Protocol error."},
		{"RETR x", "-ERR Protocol error."},
		{"RETR -1", "-ERR Protocol error."},
		{"RETR 1 2", "-ERR Protocol error."},
		{"RETR 0", "-ERR The specified message is out of range."},
		{"RETR 4", "-ERR The specified message is out of range."},
		{"RETR 99999999999999999999", "-ERR Protocol error."},
		{"TOP 1", "-ERR Protocol error."},
		{"TOP 1 x", "-ERR Protocol error."},
		{"TOP 1 -1", "-ERR Protocol error."},
		{"DELE", "-ERR Protocol error."},
		{"DELE 1 2", "-ERR Protocol error."},
		{"LIST 1 2", "-ERR Protocol error."},
		{"UIDL x", "-ERR Protocol error."},
		{"STAT 1", "-ERR Protocol error."},
		{"RSET 1", "-ERR Protocol error."},
		{"NOOP 1", "-ERR Protocol error."},
		{"QUIT 1", "-ERR Protocol error."},
		{"FOO", "-ERR Unknown command."},
		{"STAT\t", "-ERR Unknown command."},
		{"stat", fmt.Sprintf("+OK 3 %d", totalSize(t, s, alice))},
		{"LIST  1", fmt.Sprintf("+OK 1 %d", len(mustMessages(t, s, alice)[0]))},
	} {
		c.expect(tc.cmd, tc.want)
	}
	// A bare LF ends a line too.
	if _, err := io.WriteString(c.conn, "NOOP\n"); err != nil {
		t.Fatal(err)
	}
	if got := c.line(); got != "+OK" {
		t.Fatalf("NOOP with LF: got %q", got)
	}
	// A line beyond the limit ends the connection; nothing is deleted.
	c.expect("DELE 1", "+OK")
	c.send(strings.Repeat("A", pop3MaxLine+10))
	if got := c.line(); got != "-ERR Line too long. Connection is closed." {
		t.Fatalf("overlong line: got %q", got)
	}
	c.eof()
	if err := s.WaitSessions(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if n := len(mustMessages(t, s, alice)); n != 3 {
		t.Fatalf("got %d messages, want 3", n)
	}

	// The same limit holds for a SASL response.
	c = dialPOP3(t, s)
	c.expect("AUTH XOAUTH2", "+ ")
	c.send(strings.Repeat("A", pop3MaxLine+10))
	if got := c.line(); got != "-ERR Line too long. Connection is closed." {
		t.Fatalf("overlong SASL response: got %q", got)
	}
	c.eof()
}

func mustMessages(t *testing.T, s *POP3, mailbox string) [][]byte {
	t.Helper()
	msgs, err := s.Messages(mailbox)
	if err != nil {
		t.Fatalf("Messages: %v", err)
	}
	return msgs
}

func TestPOP3Timeouts(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{PreAuthTimeout: 200 * time.Millisecond, IdleTimeout: 400 * time.Millisecond})
	c := dialPOP3(t, s)
	start := time.Now()
	c.eof()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("pre-auth timeout took %v", d)
	}
	c = dialPOP3(t, s)
	c.login(alice, popAppToken(t, f))
	c.expect("DELE 1", "+OK")
	time.Sleep(250 * time.Millisecond)
	c.expect("NOOP", "+OK") // the idle timeout is longer
	c.eof()
	if err := s.WaitSessions(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if n := len(mustMessages(t, s, alice)); n != 3 {
		t.Fatalf("after an idle timeout: %d messages, want 3", n)
	}
}

func TestPOP3HandshakeTimeout(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{PreAuthTimeout: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// No TLS handshake: the server gives up and closes.
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("got %v, want the server to close the connection", err)
	}
	if err := s.WaitSessions(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
}

func TestPOP3MessagesUnknownMailbox(t *testing.T) {
	f := newFixture(t)
	s, _ := newPOP3(t, f, POP3Options{})
	if _, err := s.Messages("nobody@contoso.onmicrosoft.com"); !errors.Is(err, ErrUnknownMailbox) {
		t.Fatalf("got %v, want ErrUnknownMailbox", err)
	}
	if err := s.Deliver("nobody@contoso.onmicrosoft.com", []byte("x")); !errors.Is(err, ErrUnknownMailbox) {
		t.Fatalf("Deliver: got %v", err)
	}
}
