package imap

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

func TestIMAPLoginForms(t *testing.T) {
	up := startStub(t, defaultStub())
	const pass = `p"a\ss word`
	tests := []struct {
		name   string
		pass   string
		script []string // client lines; "<" expects a line with this prefix
		ok     string   // the tagged OK's prefix
	}{
		{"atom", "s3cret!", []string{"a LOGIN alice@example.com s3cret!\r\n"}, "a OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ UIDPLUS] LOGIN completed"},
		{"quoted", pass, []string{`a LOGIN "alice@example.com" "p\"a\\ss word"` + "\r\n"}, "a OK [CAPABILITY"},
		{"literal", pass, []string{"a LOGIN {17}\r\n", "<+ ", "alice@example.com {11}\r\n", "<+ ", pass + "\r\n"}, "a OK [CAPABILITY"},
		{"literal+", pass, []string{"a LOGIN {17+}\r\nalice@example.com {11+}\r\n" + pass + "\r\n"}, "a OK [CAPABILITY"},
		{"mixed case", "pw", []string{"a login ALICE@example.com pw\r\n"}, "a OK [CAPABILITY"},
		{"plain IR", pass, []string{"a AUTHENTICATE PLAIN " + proxytest.B64("\x00alice@example.com\x00"+pass) + "\r\n"}, "a OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ UIDPLUS] AUTHENTICATE completed"},
		{"plain continuation", pass, []string{"a AUTHENTICATE plain\r\n", "<+ ", proxytest.B64("\x00alice@example.com\x00"+pass) + "\r\n"}, "a OK [CAPABILITY"},
		{"plain authzid", "pw", []string{"a AUTHENTICATE PLAIN " + proxytest.B64("alice@example.com\x00alice@example.com\x00pw") + "\r\n"}, "a OK [CAPABILITY"},
		{"login", pass, []string{"a AUTHENTICATE LOGIN\r\n", "<+ VXNlcm5hbWU6", proxytest.B64("alice@example.com") + "\r\n", "<+ UGFzc3dvcmQ6", proxytest.B64(pass) + "\r\n"}, "a OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ UIDPLUS] AUTHENTICATE completed"},
		{"login IR", pass, []string{"a AUTHENTICATE login " + proxytest.B64("alice@example.com") + "\r\n", "<+ UGFzc3dvcmQ6", proxytest.B64(pass) + "\r\n"}, "a OK [CAPABILITY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: tt.pass}}, up)
			c := dialClient(t, addr)
			c.greet()
			for _, l := range tt.script {
				if p, ok := strings.CutPrefix(l, "<"); ok {
					c.Expect(p)
				} else {
					c.Send(l)
				}
			}
			c.Expect(tt.ok)
			c.Send("b NOOP\r\n")
			c.Expect("b OK NOOP done by stub")
		})
	}
}

func TestIMAPAuthenticateFailures(t *testing.T) {
	up := startStub(t, defaultStub())
	tests := []struct {
		name   string
		script []string
		reply  string
	}{
		{"cancel", []string{"a AUTHENTICATE PLAIN\r\n", "<+ ", "*\r\n"}, "a BAD AUTHENTICATE cancelled"},
		{"bad base64 IR", []string{"a AUTHENTICATE PLAIN !!!!\r\n"}, "a BAD Invalid base64"},
		{"bad base64 continuation", []string{"a AUTHENTICATE PLAIN\r\n", "<+ ", "not base64\r\n"}, "a BAD Invalid base64"},
		{"empty IR", []string{"a AUTHENTICATE PLAIN =\r\n"}, "a BAD Invalid PLAIN response"},
		{"one NUL", []string{"a AUTHENTICATE PLAIN " + proxytest.B64("alice\x00pw") + "\r\n"}, "a BAD Invalid PLAIN response"},
		{"other authzid", []string{"a AUTHENTICATE PLAIN " + proxytest.B64("bob\x00alice\x00pw") + "\r\n"}, "a NO [AUTHORIZATIONFAILED]"},
		{"mechanism", []string{"a AUTHENTICATE CRAM-MD5\r\n"}, "a NO [CANNOT] Unsupported authentication mechanism"},
		{"wrong password", []string{"a AUTHENTICATE PLAIN " + proxytest.B64("\x00alice\x00nope") + "\r\n"}, "a NO [AUTHENTICATIONFAILED] Invalid credentials"},
		{"empty response", []string{"a AUTHENTICATE PLAIN\r\n", "<+ ", "\r\n"}, "a BAD Invalid PLAIN response"},
		{"login cancel", []string{"a AUTHENTICATE LOGIN\r\n", "<+ VXNlcm5hbWU6", proxytest.B64("alice") + "\r\n", "<+ UGFzc3dvcmQ6", "*\r\n"}, "a BAD AUTHENTICATE cancelled"},
		{"login empty user", []string{"a AUTHENTICATE LOGIN =\r\n"}, "a BAD Invalid LOGIN response"},
		{"login wrong password", []string{"a AUTHENTICATE LOGIN " + proxytest.B64("alice") + "\r\n", "<+ ", proxytest.B64("nope") + "\r\n"}, "a NO [AUTHENTICATIONFAILED] Invalid credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			auth := &proxytest.Auth{Pass: "pw"}
			log, logs := proxytest.NewLogger(t)
			_, addr := startProxy(t, Options{Auth: auth, Logger: log}, up)
			c := dialClient(t, addr)
			c.greet()
			for _, l := range tt.script {
				if p, ok := strings.CutPrefix(l, "<"); ok {
					c.Expect(p)
				} else {
					c.Send(l)
				}
			}
			c.Expect(tt.reply)
			// The session goes on.
			c.Send("b NOOP\r\n")
			c.Expect("b OK NOOP completed")
			// Every refused login is logged once, with its reason.
			if n := strings.Count(logs.String(), `msg="login failed"`); n != 1 {
				t.Fatalf("%d login failed lines, want 1:\n%s", n, logs)
			}
		})
	}
}

// TestIMAPPreLoginFidelity: pre-login commands answered as Dovecot answers
// them (test/imap_fidelity_test.go compares with a real Dovecot).
func TestIMAPPreLoginFidelity(t *testing.T) {
	up := startStub(t, defaultStub())
	_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
	c := dialClient(t, addr)
	if g := c.greet(); !strings.Contains(g, " AUTH=PLAIN AUTH=LOGIN") {
		t.Fatalf("greeting %q does not offer AUTH=LOGIN", g)
	}
	c.Send("a ENABLE CONDSTORE\r\n")
	c.Expect("* ENABLED")
	c.Expect("a OK ENABLE ignored in non-authenticated state.")
	// imaptest's ID test: a 31 KB line of 30 pairs (RFC 2971's limits).
	id := "b ID (" + strings.Repeat(`"name" "`+strings.Repeat("y", 1000)+`" `, 30) + `"x" NIL)` + "\r\n"
	c.Send(id)
	c.Expect("* ID")
	c.Expect("b OK ID completed")
	// Up to 64 KiB.
	c.Send("c ID (\"x\" \"" + strings.Repeat("z", maxLine-20) + "\")\r\n")
	c.Expect("* ID")
	c.Expect("c OK ID completed")
	c.Send("d LOGIN alice pw\r\n")
	c.Expect("d OK [CAPABILITY")
}

func TestIMAPInvalidCredentials(t *testing.T) {
	up := startStub(t, defaultStub())
	auth := &proxytest.Auth{Pass: "pw"}
	_, addr := startProxy(t, Options{Auth: auth}, up)
	c := dialClient(t, addr)
	c.greet()
	c.Send("a LOGIN unknown pw\r\n")
	unknown := c.Line()
	c.Send("a LOGIN alice wrong\r\n")
	wrong := c.Line()
	const want = "a NO [AUTHENTICATIONFAILED] Invalid credentials"
	if unknown != want || wrong != want {
		t.Fatalf("got %q and %q, want both %q", unknown, wrong, want)
	}
	c.Send("c LOGIN alice wrong\r\n")
	c.Expect("c NO [AUTHENTICATIONFAILED] Invalid credentials")
	c.Expect("* BYE Too many failures")
	c.ExpectClosed()
	if n := auth.Calls.Load(); n != 3 {
		t.Fatalf("Authenticate called %d times, want 3", n)
	}
}

func TestIMAPAuthenticatorErrors(t *testing.T) {
	up := startStub(t, defaultStub())
	tests := []struct {
		err   error
		reply string
	}{
		{&proxy.LoginError{Kind: proxy.KindAccount, Reason: "Consent missing, ask your administrator", Err: errors.New("AADSTS65001")}, "a NO [AUTHENTICATIONFAILED] Consent missing, ask your administrator"},
		{&proxy.LoginError{Kind: proxy.KindUnavailable, Reason: "Token service down", Err: errors.New("503")}, "a NO [UNAVAILABLE] Token service down"},
		{&proxy.LoginError{Kind: proxy.KindUnavailable}, "a NO [UNAVAILABLE] Upstream server unavailable, try again later"},
		{&proxy.LoginError{Kind: proxy.KindAccount, Reason: "bad\r\nreason\x00é"}, "a NO [AUTHENTICATIONFAILED] bad??reason???"},
		{errors.New("database locked"), "a NO [UNAVAILABLE] temporary failure, try again later"},
	}
	for _, tt := range tests {
		t.Run(tt.reply, func(t *testing.T) {
			log, logs := proxytest.NewLogger(t)
			_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw", Err: tt.err}, Logger: log}, up)
			c := dialClient(t, addr)
			c.greet()
			c.Send("a LOGIN alice pw\r\n")
			if got := c.Line(); got != tt.reply {
				t.Fatalf("got %q, want %q", got, tt.reply)
			}
			// The detail logged: a LoginError's Err, or any other error
			// itself.
			detail := tt.err
			if le := (*proxy.LoginError)(nil); errors.As(tt.err, &le) {
				detail = le.Err
			}
			if detail != nil && !strings.Contains(logs.String(), detail.Error()) {
				t.Fatalf("log lacks the detail %q:\n%s", detail, logs)
			}
		})
	}
}

func TestIMAPUpstreamUnavailable(t *testing.T) {
	closedAddr := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}()
	bye := defaultStub()
	bye.Greeting = "* BYE too busy"
	throttled := defaultStub()
	throttled.Reject = "BAD Request is throttled. Suggested Backoff Time: 100 milliseconds"
	silent := silentListener(t, nil)
	silentTLS := silentListener(t, &tls.Config{Certificates: []tls.Certificate{proxytest.MustCert(t).Cert}})
	tests := []struct {
		name     string
		stub     *stubUpstream
		upstream string
		tls      *tls.Config
		dial     time.Duration // DialTimeout
		login    time.Duration // LoginTimeout
	}{
		{name: "refused", upstream: closedAddr},
		{name: "no TLS handshake", upstream: silent, dial: 50 * time.Millisecond},
		{name: "no greeting", upstream: silentTLS, login: 50 * time.Millisecond},
		{name: "untrusted certificate", stub: defaultStub(), tls: &tls.Config{}},
		{name: "greeting BYE", stub: bye},
		{name: "throttled", stub: throttled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.stub != nil {
				startStub(t, tt.stub)
				tt.upstream = tt.stub.addr
			}
			auth := &proxytest.Auth{Pass: "pw"}
			log, logs := proxytest.NewLogger(t)
			_, addr := startProxy(t, Options{
				Auth: auth, Upstream: tt.upstream, UpstreamTLS: tt.tls, Logger: log,
				DialTimeout: tt.dial, LoginTimeout: tt.login,
			}, nil)
			c := dialClient(t, addr)
			c.greet()
			c.Send("a LOGIN alice pw\r\n")
			c.Expect("a NO [UNAVAILABLE] Upstream server unavailable, try again later")
			if r := auth.Rejections(); len(r) != 0 {
				t.Fatalf("UpstreamRejected called: %q", r)
			}
			if !strings.Contains(logs.String(), "upstream login failed") {
				t.Fatalf("log lacks the failure:\n%s", logs)
			}
		})
	}
}

// silentListener accepts connections (completing the TLS handshake if cfg
// is set) and never says anything.
func silentListener(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if cfg != nil {
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				tc.Handshake()
			}
			conns = append(conns, c)
		}
	}()
	return ln.Addr().String()
}

func TestIMAPUpstreamRejected(t *testing.T) {
	refused := defaultStub()
	refused.Reject = "NO AUTHENTICATE failed."
	notConnected := defaultStub()
	notConnected.CapsInOK = false
	notConnected.CapFail = "BAD User is authenticated but not connected."
	tests := []struct {
		name   string
		stub   *stubUpstream
		detail []string // in UpstreamRejected's detail
		advice string   // in the log
	}{
		{"AUTHENTICATE failed", refused, []string{"AUTHENTICATE failed.", xoauth2.DefaultErrorChallenge}, "Set-CASMailbox -Identity <mailbox> -ImapEnabled $true"},
		{"not connected", notConnected, []string{"User is authenticated but not connected."}, "Add-MailboxPermission"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			startStub(t, tt.stub)
			auth := &proxytest.Auth{Pass: "pw"}
			log, logs := proxytest.NewLogger(t)
			_, addr := startProxy(t, Options{Auth: auth, Logger: log}, tt.stub)
			c := dialClient(t, addr)
			c.greet()
			c.Send("a LOGIN alice pw\r\n")
			if l := c.Expect("a NO [AUTHENTICATIONFAILED] Mailbox login refused by the mail server"); strings.Contains(l, "Set-") {
				t.Fatalf("advice sent to the client: %q", l)
			}
			r := auth.Rejections()
			if len(r) != 1 || !strings.HasPrefix(r[0], "alice: ") {
				t.Fatalf("UpstreamRejected: got %q, want one call for alice", r)
			}
			for _, d := range tt.detail {
				if !strings.Contains(r[0], d) {
					t.Fatalf("detail %q lacks %q", r[0], d)
				}
			}
			if !strings.Contains(logs.String(), tt.advice) {
				t.Fatalf("log lacks advice %q:\n%s", tt.advice, logs)
			}
		})
	}
}

// A token upstream refuses although the Authenticator believed it valid is
// replaced once, within the same login; a second refusal fails the client.
func TestIMAPUpstreamRejectedRetriesOnce(t *testing.T) {
	t.Run("new token accepted", func(t *testing.T) {
		stub := defaultStub()
		startStub(t, stub)
		auth := &proxytest.Auth{Pass: "pw", Retry: true, StaleFirst: true}
		_, addr := startProxy(t, Options{Auth: auth}, stub)
		c := dialClient(t, addr)
		c.greet()
		c.Send("a LOGIN alice pw\r\n")
		c.Expect("a OK")
		if n, r := auth.Calls.Load(), auth.Rejections(); n != 2 || len(r) != 1 {
			t.Fatalf("%d Authenticate calls and rejections %q, want 2 and one", n, r)
		}
	})
	t.Run("refused again", func(t *testing.T) {
		stub := defaultStub()
		stub.Reject = "NO AUTHENTICATE failed."
		startStub(t, stub)
		auth := &proxytest.Auth{Pass: "pw", Retry: true}
		_, addr := startProxy(t, Options{Auth: auth}, stub)
		c := dialClient(t, addr)
		c.greet()
		c.Send("a LOGIN alice pw\r\n")
		c.Expect("a NO [AUTHENTICATIONFAILED]")
		if n, r := auth.Calls.Load(), auth.Rejections(); n != 2 || len(r) != 2 {
			t.Fatalf("%d Authenticate calls and %d rejections, want 2 and 2", n, len(r))
		}
	})
}

func TestIMAPUpstreamCapabilities(t *testing.T) {
	noIR := defaultStub()
	noIR.Greeting = "* OK stub ready"
	noIR.PreCaps = "IMAP4rev1 AUTH=XOAUTH2"
	noIR.CapsInOK = false
	exchange := defaultStub()
	exchange.Greeting = "* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADEAMgBDAEEAMAAwADAANgAuAG4AYQBtAHAA]"
	exchange.CapsInOK = false
	exchange.Caps = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+"
	greetNoIR := defaultStub()
	greetNoIR.Greeting = "* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready"
	tests := []struct {
		name         string
		stub         *stubUpstream
		inline, cont int32
		ok           string
	}{
		{"caps in greeting and OK", defaultStub(), 1, 0, "a OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ UIDPLUS] LOGIN completed"},
		{"no SASL-IR", noIR, 0, 1, "a OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ UIDPLUS] LOGIN completed"},
		{"no SASL-IR in greeting", greetNoIR, 0, 1, "a OK [CAPABILITY"},
		{"exchange", exchange, 1, 0, "a OK [CAPABILITY " + exchange.Caps + "] LOGIN completed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			startStub(t, tt.stub)
			_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, tt.stub)
			c := dialClient(t, addr)
			c.greet()
			c.Send("a LOGIN alice pw\r\n")
			if got := c.Line(); !strings.HasPrefix(got, tt.ok) {
				t.Fatalf("got %q, want prefix %q", got, tt.ok)
			}
			if i, n := tt.stub.inlineIR.Load(), tt.stub.continueIR.Load(); i != tt.inline || n != tt.cont {
				t.Fatalf("initial responses inline %d, after + %d; want %d, %d", i, n, tt.inline, tt.cont)
			}
		})
	}
}

func TestIMAPPipelinedAfterLogin(t *testing.T) {
	up := startStub(t, defaultStub())
	_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
	c := dialClient(t, addr)
	c.greet()
	c.Send("a LOGIN alice pw\r\nb NOOP\r\nc FOO bar\r\n")
	c.Expect("a OK [CAPABILITY")
	c.Expect("b OK NOOP done by stub")
	c.Expect("c OK FOO done by stub")
}

func TestIMAPUpstreamDataAfterOK(t *testing.T) {
	stub := defaultStub()
	stub.AfterLogin = "* 42 EXISTS\r\n* OK [ALERT] hello\r\n"
	up := startStub(t, stub)
	_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
	c := dialClient(t, addr)
	c.greet()
	c.Send("a LOGIN alice pw\r\n")
	c.Expect("a OK [CAPABILITY")
	c.Expect("* 42 EXISTS")
	c.Expect("* OK [ALERT] hello")
}

func TestIMAPLargeLiterals(t *testing.T) {
	up := startStub(t, defaultStub())
	_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
	msg := make([]byte, 5<<20)
	rand.Read(msg)
	sum := sha256.Sum256(msg)
	wantOK := fmt.Sprintf("OK APPEND %d %s", len(msg), hex.EncodeToString(sum[:]))

	t.Run("APPEND", func(t *testing.T) {
		c := dialClient(t, addr)
		c.login("alice", "pw")
		c.Send(fmt.Sprintf("b APPEND INBOX {%d}\r\n", len(msg)))
		c.Expect("+ ")
		c.Send(string(msg) + "\r\n")
		c.Expect("b " + wantOK)
	})
	t.Run("APPEND non-synchronising", func(t *testing.T) {
		c := dialClient(t, addr)
		c.login("alice", "pw")
		c.Send(fmt.Sprintf("b APPEND INBOX {%d+}\r\n%s\r\nc NOOP\r\n", len(msg), msg))
		c.Expect("b " + wantOK)
		c.Expect("c OK NOOP done by stub")
	})
	t.Run("FETCH", func(t *testing.T) {
		c := dialClient(t, addr)
		c.login("alice", "pw")
		const n = 5<<20 + 17
		c.Send(fmt.Sprintf("b FETCH %d\r\n", n))
		c.Expect(fmt.Sprintf("* 1 FETCH (BODY[] {%d}", n))
		h := sha256.New()
		if _, err := io.CopyN(h, c.R, n); err != nil {
			t.Fatal(err)
		}
		want := sha256.New()
		for m := n; m > 0; m -= min(m, len(fetchPattern)) {
			want.Write(fetchPattern[:min(m, len(fetchPattern))])
		}
		if !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
			t.Fatal("FETCH body differs")
		}
		c.Expect(")")
		c.Expect("b OK FETCH completed")
	})
}

func TestIMAPIdle(t *testing.T) {
	up := startStub(t, defaultStub())
	_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
	c := dialClient(t, addr)
	c.login("alice", "pw")
	c.Send("b IDLE\r\n")
	c.Expect("+ idling")
	c.Expect("* 1 EXISTS")
	c.Send("DONE\r\n")
	c.Expect("b OK IDLE terminated")
	c.Send("c LOGOUT\r\n")
	c.Expect("* BYE stub logging out")
	c.Expect("c OK LOGOUT completed")
	c.ExpectClosed()
}

func TestIMAPPreAuthCommands(t *testing.T) {
	long := "a NOOP " + strings.Repeat("x", maxLine) + "\r\n"
	tests := []struct {
		name   string
		script []string // "<" expects a line prefix, "<EOF" the close
	}{
		{"capability", []string{"a CAPABILITY\r\n", "<* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN", "<a OK CAPABILITY completed"}},
		{"noop", []string{"a noop\r\n", "<a OK NOOP completed"}},
		{"logout", []string{"a LOGOUT\r\n", "<* BYE", "<a OK LOGOUT completed", "<EOF"}},
		{"id nil", []string{"a ID NIL\r\n", `<* ID ("name" "broker")`, "<a OK ID completed"}},
		{"id list", []string{`a ID ("name" "scanner" "version" NIL)` + "\r\n", `<* ID ("name" "broker")`, "<a OK ID completed"}},
		{"id literal", []string{"a ID ({4}\r\n", "<+ ", "name {3+}\r\nacd)\r\n", `<* ID ("name" "broker")`, "<a OK ID completed"}},
		{"id empty", []string{"a ID ()\r\n", "<* ID", "<a OK"}},
		{"id bad", []string{"a ID (\"name\")\r\n", "<a BAD Syntax error"}},
		{"select", []string{"a SELECT INBOX\r\n", "<a BAD Log in first"}},
		{"select literal", []string{"a SELECT {5}\r\n", "<a BAD Log in first", "b NOOP\r\n", "<b OK"}},
		{"select literal+", []string{"a SELECT {5+}\r\nINBOX\r\nb NOOP\r\n", "<a BAD Log in first", "<b OK"}},
		{"unknown", []string{"a XYZZY\r\n", "<a BAD Unknown command"}},
		{"no tag", []string{"\r\n", "<* BAD", "(x) NOOP\r\n", "<* BAD", "+ NOOP\r\n", "<* BAD"}},
		{"no command", []string{"a\r\n", "<a BAD Missing command", "a \r\n", "<a BAD Invalid command"}},
		{"login args", []string{"a LOGIN alice\r\n", "<a BAD Syntax error", "a LOGIN alice pw extra\r\n", "<a BAD Syntax error", "a LOGIN (alice) pw\r\n", "<a BAD Syntax error"}},
		{"unterminated quote", []string{`a LOGIN "alice pw` + "\r\n", "<a BAD Syntax error"}},
		{"bad escape", []string{`a LOGIN "al\ice" pw` + "\r\n", "<a BAD Syntax error"}},
		{"noop args", []string{"a NOOP now\r\n", "<a BAD Syntax error"}},
		{"literal not at end", []string{"a LOGIN {5} pw\r\n", "<a BAD Syntax error"}},
		{"huge literal", []string{"a LOGIN {99999}\r\n", "<a BAD Literal too large", "b NOOP\r\n", "<b OK NOOP"}},
		{"huge literal+", []string{"a LOGIN {99999+}\r\n", "<a BAD Literal too large", "<* BYE", "<EOF"}},
		{"huge literal+ unknown", []string{"a FOO {99999+}\r\n", "<a BAD Literal too large", "<* BYE", "<EOF"}},
		{"long line", []string{long, "<* BAD Line too long", "<* BYE", "<EOF"}},
		{"long command", []string{"a ID ({4000+}\r\n" + strings.Repeat("x", 4000) + " {4000+}\r\n" + strings.Repeat("x", 4000) + ")\r\n", "<* ID", "<a OK ID completed"}},
		{"too long command", []string{"a ID (" + strings.Repeat("{4000+}\r\n"+strings.Repeat("x", 4000)+" NIL ", 21) + ")\r\n", "<a BAD Command too long", "<* BYE", "<EOF"}},
		{"bare LF", []string{"a NOOP\n", "<a OK NOOP completed"}},
		{"starttls unavailable", []string{"a STARTTLS\r\n", "<a BAD STARTTLS not available"}},
		{"many bad", []string{strings.Repeat("a BAD\r\n", maxBadCommands), "<a BAD", "<a BAD", "<a BAD", "<a BAD", "<a BAD", "<a BAD", "<a BAD", "<a BAD", "<a BAD", "<a BAD", "<* BYE Too many invalid commands", "<EOF"}},
		{"binary", []string{"\x00\x01\xff\xfe a\r\n", "<* BAD"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			auth := &proxytest.Auth{Pass: "pw"}
			_, addr := startProxy(t, Options{Auth: auth, Upstream: "127.0.0.1:1"}, nil)
			c := dialClient(t, addr)
			c.greet()
			for _, l := range tt.script {
				switch p, ok := strings.CutPrefix(l, "<"); {
				case p == "EOF":
					c.ExpectClosed()
					return
				case ok:
					c.Expect(p)
				default:
					c.Send(l)
				}
			}
			c.Send("z NOOP\r\n")
			c.Expect("z OK NOOP completed")
			if n := auth.Calls.Load(); n != 0 {
				t.Fatalf("Authenticate called %d times", n)
			}
		})
	}
}

func TestIMAPPreAuthTimeout(t *testing.T) {
	_, addr := startProxy(t, Options{Auth: &proxytest.Auth{}, Upstream: "127.0.0.1:1", PreAuthTimeout: 50 * time.Millisecond}, nil)
	c := dialClient(t, addr)
	c.greet()
	c.Expect("* BYE Autologout; not logged in in time")
	c.ExpectClosed()

	// A literal never sent counts as idle too.
	c = dialClient(t, addr)
	c.greet()
	c.Send("a LOGIN {3}\r\n")
	c.Expect("+ ")
	c.Expect("* BYE Autologout")
	c.ExpectClosed()
}

func startTLSClient(t *testing.T, c *testClient) *testClient {
	t.Helper()
	tc := tls.Client(c.Conn, &tls.Config{RootCAs: proxytest.MustCert(t).Pool, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return newTestClient(t, tc)
}

func TestIMAPStartTLS(t *testing.T) {
	up := startStub(t, defaultStub())
	tlsConf := &tls.Config{Certificates: []tls.Certificate{proxytest.MustCert(t).Cert}}
	auth := &proxytest.Auth{Pass: "pw"}
	_, addr := startProxy(t, Options{Auth: auth, TLS: tlsConf}, up)

	t.Run("login", func(t *testing.T) {
		c := dialClient(t, addr)
		if g := c.greet(); !strings.Contains(g, " STARTTLS]") {
			t.Fatalf("greeting %q lacks STARTTLS", g)
		}
		c.Send("a STARTTLS\r\n")
		c.Expect("a OK Begin TLS")
		c = startTLSClient(t, c)
		c.Send("b CAPABILITY\r\n")
		if l := c.Expect("* CAPABILITY "); strings.Contains(l, "STARTTLS") {
			t.Fatalf("STARTTLS offered again: %q", l)
		}
		c.Expect("b OK")
		c.Send("c STARTTLS\r\n")
		c.Expect("c BAD STARTTLS not available")
		c.Send("d LOGIN alice pw\r\n")
		c.Expect("d OK [CAPABILITY")
		c.Send("e NOOP\r\n")
		c.Expect("e OK NOOP done by stub")
	})
	t.Run("injection", func(t *testing.T) {
		calls := auth.Calls.Load()
		c := dialClient(t, addr)
		c.greet()
		// RFC 3501 §6.2.1: what follows STARTTLS in the same packet is
		// not protected and must not be executed.
		c.Send("a STARTTLS\r\nb LOGIN alice pw\r\nc NOOP\r\n")
		c.Expect("a OK Begin TLS")
		c = startTLSClient(t, c)
		c.Send("d NOOP\r\n")
		c.Expect("d OK NOOP completed")
		if n := auth.Calls.Load(); n != calls {
			t.Fatalf("injected LOGIN reached the Authenticator")
		}
	})
	t.Run("handshake garbage", func(t *testing.T) {
		c := dialClient(t, addr)
		c.greet()
		c.Send("a STARTTLS\r\n")
		c.Expect("a OK Begin TLS")
		c.Send("b LOGIN alice pw\r\n")
		c.ExpectClosed()
	})
}

func TestIMAPImplicitTLS(t *testing.T) {
	up := startStub(t, defaultStub())
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{proxytest.MustCert(t).Cert}})
	if err != nil {
		t.Fatal(err)
	}
	serveProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}, TLS: &tls.Config{}}, up, ln)
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: proxytest.MustCert(t).Pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := newTestClient(t, conn)
	if g := c.greet(); strings.Contains(g, "STARTTLS") {
		t.Fatalf("greeting %q offers STARTTLS on implicit TLS", g)
	}
	c.Send("a LOGIN alice pw\r\n")
	c.Expect("a OK [CAPABILITY")
	c.Send("b NOOP\r\n")
	c.Expect("b OK NOOP done by stub")
}

func TestIMAPCloseEndsSessions(t *testing.T) {
	up := startStub(t, defaultStub())
	log, logs := proxytest.NewLogger(t)
	srv, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}, Logger: log}, up)
	spliced := dialClient(t, addr)
	spliced.login("alice", "pw")
	spliced.Send("b IDLE\r\n")
	spliced.Expect("+ idling")
	spliced.Expect("* 1 EXISTS")
	preauth := dialClient(t, addr)
	preauth.greet()
	if n := srv.Sessions(); n != 2 {
		t.Fatalf("Sessions: got %d, want 2", n)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	spliced.ExpectClosed()
	preauth.ExpectClosed()
	proxytest.WaitFor(t, "sessions to end", func() bool { return srv.Sessions() == 0 })
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatal("listener still accepting after Close")
	}
	if n := strings.Count(logs.String(), "reason=\"server closed\""); n != 2 {
		t.Fatalf("got %d sessions ended by the server, want 2:\n%s", n, logs)
	}
}

func TestIMAPShutdown(t *testing.T) {
	up := startStub(t, defaultStub())

	t.Run("drains", func(t *testing.T) {
		srv, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
		c := dialClient(t, addr)
		c.login("alice", "pw")
		c.Send("b NOOP\r\n")
		c.Expect("b OK NOOP done by stub")
		idle := dialClient(t, addr)
		idle.login("alice", "pw")
		idle.Send("b IDLE\r\n")
		idle.Expect("+ idling")
		idle.Expect("* 1 EXISTS")
		preauth := dialClient(t, addr)
		preauth.greet()
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(context.Background()) }()
		// Between commands, in IDLE, before login: a BYE at once.
		for _, cl := range []*testClient{c, idle, preauth} {
			cl.Expect("* BYE Server shutting down")
			cl.ExpectClosed()
			cl.Conn.Close()
		}
		if err := <-done; err != nil {
			t.Fatalf("Shutdown: got %v, want nil", err)
		}
	})
	t.Run("a command in flight finishes first", func(t *testing.T) {
		srv, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
		c := dialClient(t, addr)
		c.login("alice", "pw")
		c.Send("b APPEND INBOX {5}\r\n")
		c.Expect("+ Ready")
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(context.Background()) }()
		c.Conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if line, err := c.R.ReadString('\n'); err == nil {
			t.Fatalf("got %q while the APPEND was in flight, want nothing", line)
		}
		c.Conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		c.Send("hello\r\n")
		c.Expect("b OK APPEND 5")
		c.Expect("* BYE Server shutting down")
		c.ExpectClosed()
		c.Conn.Close()
		if err := <-done; err != nil {
			t.Fatalf("Shutdown: got %v, want nil", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		srv, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
		c := dialClient(t, addr)
		c.login("alice", "pw")
		// A literal the client never sends: in flight until the deadline.
		c.Send("b APPEND INBOX {5}\r\n")
		c.Expect("+ Ready")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: got %v, want DeadlineExceeded", err)
		}
		c.ExpectClosed()
	})
	t.Run("serve after shutdown", func(t *testing.T) {
		srv := NewServer(&Options{Upstream: up.addr, Auth: &proxytest.Auth{}})
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if err := srv.Serve(ln); !errors.Is(err, proxy.ErrServerClosed) {
			t.Fatalf("Serve: got %v, want ErrServerClosed", err)
		}
	})
}

func TestIMAPTeardown(t *testing.T) {
	up := startStub(t, defaultStub())
	log, logs := proxytest.NewLogger(t)
	_, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}, Logger: log}, up)

	t.Run("client half-closes after LOGOUT", func(t *testing.T) {
		c := dialClient(t, addr)
		c.login("alice", "pw")
		c.Send("b LOGOUT\r\n")
		if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.Expect("* BYE stub logging out")
		c.Expect("b OK LOGOUT completed")
		c.ExpectClosed()
	})
	t.Run("client closes", func(t *testing.T) {
		c := dialClient(t, addr)
		c.login("bob", "pw")
		c.Send("b NOOP\r\n")
		c.Expect("b OK")
		c.Conn.Close()
		proxytest.WaitFor(t, "the session to end", func() bool {
			return strings.Contains(logs.String(), `account=bob bytes_up=8 bytes_down=24`)
		})
	})
}

// TestIMAPLogs checks the session lines, and that no secret reaches the log.
func TestIMAPLogs(t *testing.T) {
	up := startStub(t, defaultStub())
	log, logs := proxytest.NewLogger(t)
	const pass = "S3cret-Passw0rd"
	srv, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: pass}, Logger: log}, up)

	c := dialClient(t, addr)
	c.login("alice@example.com", pass)
	c.Send("b NOOP\r\nc LOGOUT\r\n")
	c.Expect("b OK")
	c.Expect("* BYE")
	c.Expect("c OK")
	c.ExpectClosed()

	plain := proxytest.B64("\x00carol@example.com\x00" + pass)
	c = dialClient(t, addr)
	c.greet()
	c.Send("a AUTHENTICATE PLAIN " + plain + "\r\n")
	c.Expect("a OK")
	c.Send("b LOGIN alice@example.com wrong-" + pass + "\r\n")
	c.Send("c LOGIN {15}\r\n")
	c.Expect("b OK")
	c.Conn.Close()
	proxytest.WaitFor(t, "sessions to end", func() bool { return srv.Sessions() == 0 })

	out := logs.String()
	secrets := []string{
		pass, plain,
		proxytest.Token("alice@example.com"), proxytest.Token("carol@example.com"),
		proxytest.B64(string(xoauth2.Response("alice@example.com", proxytest.Token("alice@example.com")))),
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("log contains secret %q:\n%s", s, out)
		}
	}
	for _, want := range []string{
		"msg=\"session start\"", "proto=imap", "remote=127.0.0.1:",
		"account=alice@example.com bytes_up=18 bytes_down=71", `reason="upstream closed"`,
		"account=carol@example.com",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("log lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "session end"); n != 2 {
		t.Fatalf("got %d session end lines, want 2:\n%s", n, out)
	}
}

type panicAuth struct{}

func (panicAuth) Authenticate(context.Context, *proxy.Login) (*proxy.Upstream, error) { panic("boom") }

func TestIMAPPanicRecovery(t *testing.T) {
	log, logs := proxytest.NewLogger(t)
	srv, addr := startProxy(t, Options{Auth: panicAuth{}, Upstream: "127.0.0.1:1", Logger: log}, nil)
	for range 2 {
		c := dialClient(t, addr)
		c.greet()
		c.Send("a LOGIN alice pw\r\n")
		c.ExpectClosed()
	}
	proxytest.WaitFor(t, "sessions to end", func() bool { return srv.Sessions() == 0 })
	if out := logs.String(); strings.Count(out, "session panic") != 2 || !strings.Contains(out, "panicAuth") {
		t.Fatalf("log lacks the panics and stack:\n%s", out)
	}
}

func TestIMAPServeRequiresOptions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := NewServer(&Options{Upstream: "x:993"}).Serve(ln); err == nil {
		t.Fatal("Serve without Auth: got nil error")
	}
}
