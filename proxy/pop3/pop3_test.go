package pop3

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// startProxy runs a POP3 proxy in front of up and returns it with its
// plain-text address and its log.
func startProxy(t *testing.T, opts Options, up *stub) (*Server, string, *proxytest.LogBuffer) {
	t.Helper()
	log, logs := proxytest.NewLogger(t)
	opts.Upstream = up.addr
	opts.UpstreamTLS = &tls.Config{RootCAs: up.pool.Pool}
	opts.Logger = log
	if opts.Auth == nil {
		opts.Auth = &proxytest.Auth{Pass: "pw", Protocol: proxy.POP3}
	}
	srv := NewServer(&opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxytest.Serve(t, srv, ln)
	return srv, ln.Addr().String(), logs
}

func dial(t *testing.T, addr string) *proxytest.Client {
	t.Helper()
	c := proxytest.Dial(t, addr)
	c.Expect("+OK ")
	return c
}

// multi reads a multi-line reply's body up to its ".".
func multi(c *proxytest.Client) []string {
	c.T.Helper()
	var lines []string
	for {
		l := c.Line()
		if l == "." {
			return lines
		}
		lines = append(lines, l)
	}
}

func TestPOP3LoginForms(t *testing.T) {
	up := startStub(t, defaultStub())
	const pass = "p a$s word"
	tests := []struct {
		name   string
		script []string // client lines; "<" expects a line with this prefix
	}{
		{"user pass", []string{"USER alice@example.com\r\n", "<+OK", "PASS " + pass + "\r\n"}},
		{"lower case, LF only", []string{"user alice@example.com\n", "<+OK", "pass " + pass + "\n"}},
		{"plain IR", []string{"AUTH PLAIN " + proxytest.B64("\x00alice@example.com\x00"+pass) + "\r\n"}},
		{"plain continuation", []string{"AUTH plain\r\n", "<+ ", proxytest.B64("\x00alice@example.com\x00"+pass) + "\r\n"}},
		{"login", []string{"AUTH LOGIN\r\n", "<+ VXNlcm5hbWU6", proxytest.B64("alice@example.com") + "\r\n", "<+ UGFzc3dvcmQ6", proxytest.B64(pass) + "\r\n"}},
		{"login IR", []string{"AUTH LOGIN " + proxytest.B64("alice@example.com") + "\r\n", "<+ UGFzc3dvcmQ6", proxytest.B64(pass) + "\r\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr, _ := startProxy(t, Options{Auth: &proxytest.Auth{Pass: pass, Protocol: proxy.POP3}}, up)
			c := dial(t, addr)
			for _, l := range tt.script {
				if p, ok := strings.CutPrefix(l, "<"); ok {
					c.Expect(p)
				} else {
					c.Send(l)
				}
			}
			c.Expect("+OK Logged in")
			c.Send("STAT\r\n")
			c.Expect("+OK 2 ")
		})
	}
}

func TestPOP3Transaction(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr, logs := startProxy(t, Options{}, up)
	c := dial(t, addr)
	// Pipelined after PASS: upstream gets them after the login.
	c.Send("USER alice@example.com\r\nPASS pw\r\nUIDL\r\nRETR 1\r\n")
	c.Expect("+OK")
	c.Expect("+OK Logged in")
	c.Expect("+OK")
	if got := multi(c); strings.Join(got, ",") != "1 uid1,2 uid2" {
		t.Fatalf("UIDL: %q", got)
	}
	c.Expect("+OK")
	if got := multi(c); strings.Join(got, "|") != "Subject: one||first|..dotted" {
		t.Fatalf("RETR: %q", got)
	}
	c.Send("TOP 2 0\r\n")
	c.Expect("+OK")
	if got := multi(c); strings.Join(got, "|") != "Subject: two|" {
		t.Fatalf("TOP: %q", got)
	}
	if n := srv.UpstreamConnections("alice@example.com"); n != 1 {
		t.Fatalf("upstream connections %d, want 1", n)
	}
	c.Send("DELE 2\r\nQUIT\r\n")
	c.Expect("+OK")
	c.Expect("+OK bye")
	c.ExpectClosed()
	proxytest.WaitFor(t, "session end", func() bool { return srv.Sessions() == 0 })
	if got := up.Deleted("alice@example.com"); len(got) != 1 || got[0] != 2 {
		t.Fatalf("deleted %v, want [2]", got)
	}
	if n := srv.UpstreamConnections("alice@example.com"); n != 0 {
		t.Fatalf("upstream connections %d after QUIT, want 0", n)
	}
	// Upstream saw AUTH XOAUTH2 and the response on its own line.
	lines := up.Lines()
	for i, l := range lines {
		if l == "AUTH XOAUTH2" {
			if i+1 >= len(lines) || strings.HasPrefix(lines[i+1], "AUTH") {
				t.Fatalf("no response line after AUTH XOAUTH2: %q", lines)
			}
			break
		}
	}
	if strings.Contains(logs.String(), "token-for-") {
		t.Fatalf("token in the log:\n%s", logs)
	}
}

func TestPOP3DropDoesNotDelete(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr, _ := startProxy(t, Options{}, up)
	c := dial(t, addr)
	c.Send("USER alice@example.com\r\nPASS pw\r\n")
	c.Expect("+OK")
	c.Expect("+OK Logged in")
	c.Send("DELE 1\r\n")
	c.Expect("+OK")
	c.Conn.Close()
	proxytest.WaitFor(t, "session end", func() bool { return srv.Sessions() == 0 })
	time.Sleep(50 * time.Millisecond)
	if got := up.Deleted("alice@example.com"); len(got) != 0 {
		t.Fatalf("deleted %v without QUIT", got)
	}
}

func TestPOP3Capa(t *testing.T) {
	up := startStub(t, defaultStub())
	cert := proxytest.MustCert(t)
	_, addr, _ := startProxy(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert.Cert}}}, up)
	// The probe has learnt upstream's CAPA, or the first session does.
	c := dial(t, addr)
	c.Send("USER alice@example.com\r\nPASS wrong\r\n")
	c.Expect("+OK")
	c.Expect("-ERR [AUTH] Authentication failed")
	c.Send("CAPA\r\n")
	c.Expect("+OK")
	got := strings.Join(multi(c), ",")
	want := "TOP,UIDL,PIPELINING,RESP-CODES,AUTH-RESP-CODE,USER,SASL PLAIN LOGIN,STLS,IMPLEMENTATION broker"
	if got != want {
		// The probe may still be under way: a second look.
		time.Sleep(200 * time.Millisecond)
		c.Send("CAPA\r\n")
		c.Expect("+OK")
		if got = strings.Join(multi(c), ","); got != want {
			t.Fatalf("CAPA: got %q, want %q", got, want)
		}
	}
	c.Send("AUTH\r\n")
	c.Expect("+OK")
	if got := strings.Join(multi(c), ","); got != "PLAIN,LOGIN" {
		t.Fatalf("AUTH list: %q", got)
	}

	// STLS, then no STLS in CAPA, then a login over TLS.
	c.Send("USER alice@example.com\r\nSTLS\r\n")
	c.Expect("+OK")
	c.Expect("+OK Begin TLS")
	tc := tls.Client(c.Conn, &tls.Config{RootCAs: cert.Pool, ServerName: "127.0.0.1"})
	c2 := proxytest.NewClient(t, tc)
	c2.Send("CAPA\r\n")
	c2.Expect("+OK")
	if got := strings.Join(multi(c2), ","); strings.Contains(got, "STLS") {
		t.Fatalf("CAPA over TLS: %q", got)
	}
	// USER before STLS is forgotten.
	c2.Send("PASS pw\r\n")
	c2.Expect("-ERR Send USER first")
	c2.Send("USER alice@example.com\r\nPASS pw\r\nSTAT\r\n")
	c2.Expect("+OK")
	c2.Expect("+OK Logged in")
	c2.Expect("+OK 2 ")
}

func TestPOP3Failures(t *testing.T) {
	up := startStub(t, defaultStub())
	tests := []struct {
		name   string
		script []string
		reply  string
	}{
		{"wrong password", []string{"USER alice@example.com\r\n", "<+OK", "PASS nope\r\n"}, "-ERR [AUTH] Authentication failed"},
		{"unknown user", []string{"USER unknown\r\n", "<+OK", "PASS pw\r\n"}, "-ERR [AUTH] Authentication failed"},
		{"pass first", []string{"PASS pw\r\n"}, "-ERR Send USER first"},
		{"cancel", []string{"AUTH PLAIN\r\n", "<+ ", "*\r\n"}, "-ERR AUTH cancelled"},
		{"bad base64", []string{"AUTH PLAIN !!!\r\n"}, "-ERR Invalid base64"},
		{"empty IR", []string{"AUTH PLAIN =\r\n"}, "-ERR Invalid PLAIN response"},
		{"other authzid", []string{"AUTH PLAIN " + proxytest.B64("bob\x00alice\x00pw") + "\r\n"}, "-ERR [AUTH] Cannot act as another user"},
		{"mechanism", []string{"AUTH CRAM-MD5\r\n"}, "-ERR Unsupported authentication mechanism"},
		{"plain wrong", []string{"AUTH PLAIN " + proxytest.B64("\x00alice\x00nope") + "\r\n"}, "-ERR [AUTH] Authentication failed"},
		{"stat", []string{"STAT\r\n"}, "-ERR Not logged in"},
		{"unknown", []string{"HELO\r\n"}, "-ERR Unknown command"},
		{"apop", []string{"APOP alice 0123456789abcdef\r\n"}, "-ERR APOP not supported"},
		{"no stls", []string{"STLS\r\n"}, "-ERR STLS not available"},
		{"NUL", []string{"USER a\x00b\r\n"}, "-ERR Invalid characters"},
		{"long line", []string{"USER " + strings.Repeat("a", 600) + "\r\n"}, "-ERR Line too long"},
		{"very long line", []string{"NOOP " + strings.Repeat("a", 20000) + "\r\n"}, "-ERR Line too long"},
		{"long user", []string{"USER " + strings.Repeat("a", 300) + "\r\n"}, "-ERR Invalid user name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr, _ := startProxy(t, Options{}, up)
			c := dial(t, addr)
			for _, l := range tt.script {
				if p, ok := strings.CutPrefix(l, "<"); ok {
					c.Expect(p)
				} else {
					c.Send(l)
				}
			}
			c.Expect(tt.reply)
			// The session goes on.
			c.Send("QUIT\r\n")
			c.Expect("+OK")
			c.ExpectClosed()
		})
	}
}

func TestPOP3FailureLimits(t *testing.T) {
	up := startStub(t, defaultStub())
	_, addr, logs := startProxy(t, Options{}, up)
	c := dial(t, addr)
	for i := 0; i < 2; i++ {
		c.Send("USER alice@example.com\r\nPASS nope\r\n")
		c.Expect("+OK")
		c.Expect("-ERR [AUTH] Authentication failed")
	}
	c.Send("USER alice@example.com\r\nPASS nope\r\n")
	c.Expect("+OK")
	c.Expect("-ERR [AUTH] Authentication failed")
	c.Expect("-ERR [AUTH] Too many failed logins")
	c.ExpectClosed()
	if n := strings.Count(logs.String(), `msg="login failed"`); n != 3 {
		t.Fatalf("%d login failed lines, want 3:\n%s", n, logs)
	}
	if strings.Contains(logs.String(), "nope") {
		t.Fatalf("password in the log:\n%s", logs)
	}

	c = dial(t, addr)
	for i := 0; i < maxBadCommands-1; i++ {
		c.Send("XYZZY\r\n")
		c.Expect("-ERR Unknown command")
	}
	c.Send("XYZZY\r\n")
	c.Expect("-ERR Unknown command")
	c.Expect("-ERR Too many invalid commands")
	c.ExpectClosed()

	// A line without an end beyond maxDiscard ends the session.
	c = dial(t, addr)
	c.Send(strings.Repeat("x", maxDiscard+readBuffer*2))
	c.Expect("-ERR Line too long")
	c.ExpectClosed()
}

func TestPOP3PreAuthTimeout(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr, _ := startProxy(t, Options{PreAuthTimeout: 300 * time.Millisecond}, up)
	c := dial(t, addr)
	c.Send("USER alice@example.com\r\n")
	c.Expect("+OK")
	c.Expect("-ERR [SYS/TEMP] Not logged in in time")
	c.ExpectClosed()
	if n := srv.Stats().PreAuthTimeouts; n != 1 {
		t.Fatalf("PreAuthTimeouts %d, want 1", n)
	}
}

func TestPOP3UpstreamRefusal(t *testing.T) {
	for _, challenge := range []bool{false, true} {
		cfg := defaultStub()
		cfg.refuse = "Authentication failure: unknown user name or bad password."
		cfg.errorChallenge = challenge
		up := startStub(t, cfg)
		auth := &proxytest.Auth{Pass: "pw", Protocol: proxy.POP3, Retry: true}
		_, addr, logs := startProxy(t, Options{Auth: auth}, up)
		c := dial(t, addr)
		c.Send("USER alice@example.com\r\nPASS pw\r\n")
		c.Expect("+OK")
		c.Expect("-ERR [AUTH] Mailbox login refused by the mail server")
		// Retried once with a new token, then refused.
		if n := auth.Calls.Load(); n != 2 {
			t.Fatalf("Authenticate called %d times, want 2", n)
		}
		for _, want := range []string{"PopEnabled $true", "POP.AccessAsApp", "retrying with a new one", "upstream login failed"} {
			if !strings.Contains(logs.String(), want) {
				t.Fatalf("log lacks %q:\n%s", want, logs)
			}
		}
		if challenge && !strings.Contains(logs.String(), `challenge {\"status\":\"401\"}`) {
			t.Fatalf("log lacks the challenge:\n%s", logs)
		}
	}
}

func TestPOP3RetryWithNewToken(t *testing.T) {
	up := startStub(t, defaultStub())
	auth := &proxytest.Auth{Pass: "pw", Protocol: proxy.POP3, Retry: true, StaleFirst: true}
	_, addr, _ := startProxy(t, Options{Auth: auth}, up)
	c := dial(t, addr)
	c.Send("USER alice@example.com\r\nPASS pw\r\n")
	c.Expect("+OK")
	c.Expect("+OK Logged in")
	if r := auth.Rejections(); len(r) != 1 {
		t.Fatalf("rejections %q, want one", r)
	}
}

func TestPOP3UpstreamDown(t *testing.T) {
	up := startStub(t, defaultStub())
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	up.addr = dead
	_, addr, logs := startProxy(t, Options{}, up)
	c := dial(t, addr)
	c.Send("CAPA\r\n")
	c.Expect("+OK")
	if got := strings.Join(multi(c), ","); !strings.HasPrefix(got, "TOP,UIDL,RESP-CODES") {
		t.Fatalf("default CAPA: %q", got)
	}
	c.Send("USER alice@example.com\r\nPASS pw\r\n")
	c.Expect("+OK")
	c.Expect("-ERR [SYS/TEMP] Upstream server unavailable")
	// The capability probe runs on its own goroutine; its warning may come
	// after the client's answer.
	proxytest.WaitFor(t, "the probe's warning in the log", func() bool {
		return strings.Contains(logs.String(), "upstream not reachable")
	})
}

func TestPOP3AccountErrors(t *testing.T) {
	up := startStub(t, defaultStub())
	for _, tt := range []struct {
		err   error
		reply string
	}{
		{&proxy.LoginError{Kind: proxy.KindAccount, Reason: "account must be signed in again by an administrator (broker login); see broker log"},
			"-ERR [AUTH] account must be signed in again by an administrator (broker login)"},
		{&proxy.LoginError{Kind: proxy.KindUnavailable, Reason: "token service unavailable"}, "-ERR [SYS/TEMP] token service unavailable"},
		{errors.New("boom"), "-ERR [SYS/TEMP] temporary failure"},
	} {
		_, addr, _ := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw", Protocol: proxy.POP3, Err: tt.err}}, up)
		c := dial(t, addr)
		c.Send("USER alice@example.com\r\nPASS pw\r\n")
		c.Expect("+OK")
		c.Expect(tt.reply)
	}
}

func TestPOP3MailboxSlots(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr, _ := startProxy(t, Options{MaxConnectionsPerMailbox: 1, ConnectionWait: 200 * time.Millisecond}, up)
	c := dial(t, addr)
	c.Send("USER alice@example.com\r\nPASS pw\r\n")
	c.Expect("+OK")
	c.Expect("+OK Logged in")
	c2 := dial(t, addr)
	c2.Send("USER alice@example.com\r\nPASS pw\r\n")
	c2.Expect("+OK")
	c2.Expect("-ERR [IN-USE] Too many connections for this mailbox")
	if n := srv.Stats().RefusedPerMailbox; n != 1 {
		t.Fatalf("RefusedPerMailbox %d", n)
	}
	c.Send("QUIT\r\n")
	c.Expect("+OK bye")
	proxytest.WaitFor(t, "slot free", func() bool { return srv.UpstreamConnections("alice@example.com") == 0 })
	c2.Send("USER alice@example.com\r\nPASS pw\r\n")
	c2.Expect("+OK")
	c2.Expect("+OK Logged in")
}

func TestPOP3ImplicitTLS(t *testing.T) {
	up := startStub(t, defaultStub())
	cert := proxytest.MustCert(t)
	log, _ := proxytest.NewLogger(t)
	srv := NewServer(&Options{Upstream: up.addr, UpstreamTLS: &tls.Config{RootCAs: up.pool.Pool}, Logger: log,
		Auth: &proxytest.Auth{Pass: "pw", Protocol: proxy.POP3}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxytest.Serve(t, srv, tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert.Cert}}))
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: cert.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := proxytest.NewClient(t, conn)
	c.Expect("+OK")
	c.Send("USER alice@example.com\r\nPASS pw\r\nSTAT\r\nQUIT\r\n")
	c.Expect("+OK")
	c.Expect("+OK Logged in")
	c.Expect("+OK 2 ")
	c.Expect("+OK bye")
}

func TestExplainRefusal(t *testing.T) {
	for text, temporary := range map[string]bool{
		"Authentication failure: unknown user name or bad password.": false,
		"[AUTH] Authentication failed.":                              false,
		"[SYS/TEMP] Server busy":                                     true,
		"Server Unavailable. 21":                                     true,
		"[IN-USE] Mailbox locked":                                    true,
	} {
		advice, temp, ok := ExplainRefusal(text)
		if !ok || temp != temporary || advice == "" {
			t.Errorf("%q: got %q %v %v", text, advice, temp, ok)
		}
	}
}

// Two servers given the same Slots (a reload's old and new) count their
// upstream sessions together, under the Slots' cap.
func TestPOP3SharedSlots(t *testing.T) {
	up := startStub(t, defaultStub())
	slots := proxy.NewSlots(1)
	opts := Options{Slots: slots, MaxConnectionsPerMailbox: 5, ConnectionWait: 200 * time.Millisecond}
	_, oldAddr, _ := startProxy(t, opts, up)
	srv, newAddr, _ := startProxy(t, opts, up)
	c := dial(t, oldAddr)
	c.Send("USER alice@example.com\r\nPASS pw\r\n")
	c.Expect("+OK")
	c.Expect("+OK Logged in")
	c2 := dial(t, newAddr)
	c2.Send("USER alice@example.com\r\nPASS pw\r\n")
	c2.Expect("+OK")
	c2.Expect("-ERR [IN-USE]")
	if n := srv.UpstreamConnections("alice@example.com"); n != 1 {
		t.Fatalf("new server sees %d upstream sessions, want the old one's 1", n)
	}
	slots.SetMax(2)
	c2.Send("USER alice@example.com\r\nPASS pw\r\n")
	c2.Expect("+OK")
	c2.Expect("+OK Logged in")
	if n := slots.InUse("alice@example.com"); n != 2 {
		t.Fatalf("slots in use %d, want 2", n)
	}
}
