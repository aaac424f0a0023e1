package smtp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

const (
	sender    = "alice@example.com"
	recipient = "bob@example.net"
)

// testMessage has a line starting with a dot, which must survive
// dot-stuffing both ways.
var testMessage = []byte("From: alice@example.com\r\nTo: bob@example.net\r\nSubject: test\r\n\r\nHello\r\n.hidden dot\r\n..two dots\r\n")

// send runs one transaction on an authenticated client and returns the
// error of the first command that failed.
func send(c *gosmtp.Client, from string, to []string, msg []byte) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	return w.Close()
}

func TestSMTPRelay(t *testing.T) {
	tests := []struct {
		name string
		auth sasl.Client
	}{
		{"PLAIN", sasl.NewPlainClient("", sender, "secret")},
		{"PLAIN with authzid", sasl.NewPlainClient(sender, sender, "secret")},
		{"LOGIN", sasl.NewLoginClient(sender, "secret")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startSMTPStub(t, &smtpStub{})
			_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
			c := dialSMTP(t, addr)
			if err := c.Auth(tt.auth); err != nil {
				t.Fatalf("AUTH: %v", err)
			}
			if err := send(c, sender, []string{recipient}, testMessage); err != nil {
				t.Fatalf("send: %v", err)
			}
			got := up.received()
			if len(got) != 1 {
				t.Fatalf("upstream got %d messages, want 1", len(got))
			}
			if m := got[0]; m.user != sender || m.from != sender || len(m.to) != 1 || m.to[0] != recipient || !bytes.Equal(m.data, testMessage) {
				t.Fatalf("upstream got %+v, want %s -> %s with %q", m, sender, recipient, testMessage)
			}
		})
	}
}

// TestSMTPLoginWithoutInitialResponse drives AUTH LOGIN and PLAIN by hand,
// as old clients do: the username after a prompt, not on the AUTH line.
func TestSMTPLoginWithoutInitialResponse(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	tests := []struct {
		name  string
		steps []string // client line, then the expected reply prefix
	}{
		{"LOGIN", []string{"AUTH LOGIN", "334 VXNlcm5hbWU6", proxytest.B64(sender), "334 UGFzc3dvcmQ6", proxytest.B64("secret"), "235 "}},
		{"LOGIN username first", []string{"AUTH LOGIN " + proxytest.B64(sender), "334 UGFzc3dvcmQ6", proxytest.B64("secret"), "235 "}},
		{"PLAIN", []string{"AUTH PLAIN", "334 ", proxytest.B64("\x00" + sender + "\x00secret"), "235 "}},
		{"LOGIN wrong password", []string{"AUTH LOGIN " + proxytest.B64(sender), "334 ", proxytest.B64("nope"), "535 5.7.8 "}},
		{"LOGIN empty username", []string{"AUTH LOGIN =", "501 5.5.2 "}},
		{"PLAIN malformed", []string{"AUTH PLAIN " + proxytest.B64("no-nul-here"), "501 5.5.2 "}},
		{"PLAIN other authzid", []string{"AUTH PLAIN " + proxytest.B64("carol@example.com\x00"+sender+"\x00secret"), "535 5.7.8 "}},
		{"cancelled", []string{"AUTH LOGIN", "334 ", "*", "501 "}},
		{"bad base64", []string{"AUTH PLAIN !!!", "454 4.7.0 Invalid base64"}},
		{"unknown mechanism", []string{"AUTH CRAM-MD5", "504 5.7.4 "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ehloClient(t, addr)
			for i := 0; i < len(tt.steps); i += 2 {
				c.Send(tt.steps[i] + "\r\n")
				c.Expect(tt.steps[i+1])
			}
		})
	}
}

func TestSMTPAuthFailures(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	auth := newSMTPStubAuth("secret")
	_, addr, logs := startSMTPProxy(t, Options{Auth: auth}, up, nil)

	c := dialSMTP(t, addr)
	for i, user := range []string{sender, "unknown"} {
		err := c.Auth(sasl.NewPlainClient("", user, "Wr0ng-pass"))
		if got := smtpCode(err); got != "535 5.7.8" {
			t.Fatalf("AUTH %d as %s: got %s, want 535 5.7.8", i, user, got)
		}
	}
	// The third failure ends the session.
	err := c.Auth(sasl.NewLoginClient(sender, "Wr0ng-pass"))
	if got := smtpCode(err); got != "421 4.7.0" {
		t.Fatalf("third failure: got %s, want 421 4.7.0", got)
	}
	if err := c.Noop(); err == nil {
		t.Fatalf("NOOP after the third failure: got success, want a closed connection")
	}
	if n := up.auths.Load(); n != 0 {
		t.Fatalf("upstream saw %d AUTH, want 0", n)
	}
	if strings.Contains(logs.String(), "Wr0ng-pass") {
		t.Fatalf("log contains a password:\n%s", logs)
	}
}

func TestSMTPAuthRequired(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := dialSMTP(t, addr)
	if got := smtpCode(c.Mail(sender, nil)); got != "530 5.7.0" {
		t.Fatalf("MAIL without AUTH: got %s, want 530 5.7.0", got)
	}
	if len(up.received()) != 0 || up.auths.Load() != 0 {
		t.Fatalf("upstream was used by an unauthenticated client")
	}
}

// remoteListener makes accepted connections report another remote address,
// to stand for a client off loopback.
type remoteListener struct {
	net.Listener
	remote net.Addr
}

type remoteConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.remote }

func (l remoteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return remoteConn{c, l.remote}, nil
}

func TestSMTPUnauthenticatedAs(t *testing.T) {
	const scanner = "scanner@example.com"
	tests := []struct {
		name   string
		remote net.Addr // nil: the real loopback address
		want   string
	}{
		{"loopback", nil, "ok"},
		{"off loopback", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}, "530 5.7.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startSMTPStub(t, &smtpStub{})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			if tt.remote != nil {
				ln = remoteListener{ln, tt.remote}
			}
			_, addr, _ := startSMTPProxy(t, Options{UnauthenticatedAs: scanner}, up, ln)
			c := dialSMTP(t, addr)
			err = send(c, scanner, []string{recipient}, testMessage)
			if got := smtpCode(err); got != tt.want {
				t.Fatalf("send without AUTH: got %s, want %s", got, tt.want)
			}
			if n := len(up.received()); (n == 1) != (tt.want == "ok") {
				t.Fatalf("upstream got %d messages", n)
			}
		})
	}
}

func TestSMTPUpstreamRepliesPassThrough(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := loginSMTP(t, addr)

	err := c.Mail("ceo@example.com", nil)
	var se *gosmtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (gosmtp.EnhancedCode{5, 7, 60}) ||
		se.Message != "SMTP; Client does not have permissions to send as this sender" {
		t.Fatalf("MAIL as another sender: got %v, want upstream's 550 5.7.60 unchanged", err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}

	// A refused recipient does not stop the others.
	if err := c.Mail(sender, nil); err != nil {
		t.Fatal(err)
	}
	if got := smtpCode(c.Rcpt("reject-me@example.net", nil)); got != "550 5.1.10" {
		t.Fatalf("RCPT refused upstream: got %s, want 550 5.1.10", got)
	}
	if err := c.Rcpt(recipient, nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(testMessage)
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	if want := "2.0.0 OK <Q1@upstream.test> [Hostname=upstream.test]"; resp.StatusText != want {
		t.Fatalf("DATA reply: got %q, want upstream's %q", resp.StatusText, want)
	}
	got := up.received()
	if len(got) != 1 || len(got[0].to) != 1 || got[0].to[0] != recipient {
		t.Fatalf("upstream got %+v, want one message to %s", got, recipient)
	}
}

func TestSMTPSeveralMessagesOneConnection(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := loginSMTP(t, addr)
	for i := 0; i < 3; i++ {
		if err := send(c, sender, []string{recipient}, testMessage); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if i == 1 {
			// An abandoned transaction in between.
			if err := c.Mail(sender, nil); err != nil {
				t.Fatal(err)
			}
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(up.received()); n != 3 {
		t.Fatalf("upstream got %d messages, want 3", n)
	}
	if n := up.peakOf(sender); n != 1 {
		t.Fatalf("upstream saw %d concurrent sessions, want 1 connection reused", n)
	}
}

func TestSMTPReconnectAfterUpstreamClosedIdle(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := loginSMTP(t, addr)
	if err := send(c, sender, []string{recipient}, testMessage); err != nil {
		t.Fatal(err)
	}
	up.closeIdle()
	if err := send(c, sender, []string{recipient}, testMessage); err != nil {
		t.Fatalf("send after upstream closed the idle connection: %v", err)
	}
	if n := len(up.received()); n != 2 {
		t.Fatalf("upstream got %d messages, want 2", n)
	}
}

// TestSMTPUpstreamLostDuringData: the client must never get a 250 for a
// message upstream did not accept.
func TestSMTPUpstreamLostDuringData(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := loginSMTP(t, addr)
	big := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"), 20000)
	up.dropAfter.Store(100 << 10)
	err := send(c, sender, []string{recipient}, big)
	if got := smtpCode(err); got != "451 4.4.2" {
		t.Fatalf("DATA with upstream gone: got %s, want 451 4.4.2", got)
	}
	if n := len(up.received()); n != 0 {
		t.Fatalf("upstream recorded %d messages, want 0", n)
	}
	// The session goes on with a new upstream connection.
	if err := send(c, sender, []string{recipient}, big); err != nil {
		t.Fatalf("retry: %v", err)
	}
	got := up.received()
	if len(got) != 1 || got[0].sum != sha256.Sum256(big) {
		t.Fatalf("upstream got %d messages or a different body", len(got))
	}
}

func TestSMTPUpstreamSilentAfterData(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{DataTimeout: 200 * time.Millisecond}, up, nil)
	c := loginSMTP(t, addr)
	_, release := up.holdData()
	defer release()
	if got := smtpCode(send(c, sender, []string{recipient}, testMessage)); got != "451 4.4.1" {
		t.Fatalf("DATA without upstream reply: got %s, want 451 4.4.1", got)
	}
}

func TestSMTPUpstreamLoginFailures(t *testing.T) {
	untrusted, err := proxytest.NewCert()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		stub     *smtpStub
		opts     Options
		want     string
		log      string // in the log
		rejected bool   // the Authenticator is told
	}{
		{
			name: "no STARTTLS", stub: &smtpStub{NoSTARTTLS: true},
			want: "454 4.7.0", log: "refusing to send a token in clear text",
		},
		{
			name: "untrusted certificate", stub: &smtpStub{},
			opts: Options{UpstreamTLS: &tls.Config{RootCAs: untrusted.Pool}},
			want: "454 4.7.0", log: "certificate",
		},
		{
			name: "SMTP AUTH disabled",
			stub: &smtpStub{Reject: &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 139},
				Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."}},
			want: "454 4.7.0", log: "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false", rejected: true,
		},
		{
			name: "token refused after error challenge",
			stub: &smtpStub{ErrorChallenge: true, Reject: &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}},
			want: "454 4.7.0", log: "challenge {", rejected: true,
		},
		{
			name: "connection limit",
			stub: &smtpStub{Reject: &gosmtp.SMTPError{Code: 432, EnhancedCode: gosmtp.EnhancedCode{4, 3, 2}, Message: "STOREDRV.ClientSubmit; sender thread limit exceeded"}},
			want: "454 4.3.2", log: "3 concurrent SMTP connections",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startSMTPStub(t, tt.stub)
			auth := newSMTPStubAuth("secret")
			tt.opts.Auth = auth
			_, addr, logs := startSMTPProxy(t, tt.opts, up, nil)
			c := dialSMTP(t, addr)
			err := c.Auth(sasl.NewPlainClient("", sender, "secret"))
			if got := smtpCode(err); got != tt.want {
				t.Fatalf("AUTH: got %s, want %s", got, tt.want)
			}
			if !strings.Contains(logs.String(), tt.log) {
				t.Fatalf("log lacks %q:\n%s", tt.log, logs)
			}
			if got := len(auth.Rejections()) > 0; got != tt.rejected {
				t.Fatalf("Authenticator told of a rejection: got %v, want %v", got, tt.rejected)
			}
			if tt.stub.NoSTARTTLS && up.auths.Load() != 0 {
				t.Fatalf("a token was sent to an upstream without TLS")
			}
			if strings.Contains(logs.String(), proxytest.Token(sender)) || strings.Contains(logs.String(), "secret") {
				t.Fatalf("log contains a secret:\n%s", logs)
			}
		})
	}
}

// As for IMAP: a token upstream refuses is replaced once within the AUTH.
func TestSMTPUpstreamRejectedRetriesOnce(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	auth := newSMTPStubAuth("secret")
	auth.Retry, auth.StaleFirst = true, true
	_, addr, _ := startSMTPProxy(t, Options{Auth: auth}, up, nil)
	c := dialSMTP(t, addr)
	if err := c.Auth(sasl.NewPlainClient("", sender, "secret")); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	if err := send(c, sender, []string{recipient}, testMessage); err != nil {
		t.Fatal(err)
	}
	if n, r := auth.Calls.Load(), auth.Rejections(); n != 2 || len(r) != 1 {
		t.Fatalf("%d Authenticate calls and rejections %q, want 2 and one", n, r)
	}
}

func TestSMTPUpstreamImplicitTLS(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{ImplicitTLS: true})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := loginSMTP(t, addr)
	if err := send(c, sender, []string{recipient}, testMessage); err != nil {
		t.Fatal(err)
	}
}

func TestSMTPUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, proxyAddr, _ := startSMTPProxy(t, Options{Upstream: addr}, nil, nil)
	c := dialSMTP(t, proxyAddr)
	if got := smtpCode(c.Auth(sasl.NewPlainClient("", sender, "secret"))); got != "454 4.7.0" {
		t.Fatalf("AUTH with upstream down: got %s, want 454 4.7.0", got)
	}
}

// TestSMTPConnectionCap: concurrent senders of one mailbox share at most
// MaxConnectionsPerMailbox upstream connections, and all get through.
func TestSMTPConnectionCap(t *testing.T) {
	gate := make(chan struct{})
	up := startSMTPStub(t, &smtpStub{Gate: gate})
	_, addr, _ := startSMTPProxy(t, Options{MaxConnectionsPerMailbox: 2}, up, nil)
	const senders = 8
	// The first two messages wait upstream until every sender has
	// started, so that the others have to queue for a connection.
	go func() {
		defer close(gate)
		if err := up.waitErr("two messages held", func() bool { return up.gated == 2 }); err != nil {
			t.Error(err)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := 0; i < senders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			c := gosmtp.NewClient(conn)
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", sender, "secret")); err != nil {
				errs <- err
				return
			}
			if err := send(c, sender, []string{recipient}, testMessage); err != nil {
				errs <- err
				return
			}
			errs <- c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(up.received()); n != senders {
		t.Fatalf("upstream got %d messages, want %d", n, senders)
	}
	if n := up.peakOf(sender); n != 2 {
		t.Fatalf("upstream saw %d concurrent connections, want 2", n)
	}
}

func TestSMTPConnectionWaitTimesOut(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	// Without reuse, the slot is freed at QUIT.
	srv, addr, _ := startSMTPProxy(t, Options{MaxConnectionsPerMailbox: 1, ConnectionWait: 100 * time.Millisecond, ReuseIdleTimeout: -1}, up, nil)
	first := loginSMTP(t, addr)
	second := dialSMTP(t, addr)
	if got := smtpCode(second.Auth(sasl.NewPlainClient("", sender, "secret"))); got != "454 4.3.2" {
		t.Fatalf("AUTH while the only connection is taken: got %s, want 454 4.3.2", got)
	}
	if n := srv.UpstreamConnections(sender); n != 1 {
		t.Fatalf("upstream connections: got %d, want 1", n)
	}
	first.Quit()
	proxytest.WaitFor(t, "the slot to be freed", func() bool { return srv.UpstreamConnections(sender) == 0 })
}

// TestSMTPMessageSize: the SIZE upstream advertises is what clients see.
func TestSMTPMessageSize(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{Size: 4096})
	srv, addr, logs := startSMTPProxy(t, Options{}, up, nil)
	proxytest.WaitFor(t, "the upstream probe", func() bool { return srv.caps.Load().size == 4096 })
	c := dialSMTP(t, addr)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if _, v := c.Extension("SIZE"); v != "4096" {
		t.Fatalf("SIZE: got %q, want upstream's 4096", v)
	}
	if ok, _ := c.Extension("SMTPUTF8"); !ok {
		t.Fatalf("SMTPUTF8 not advertised though upstream has it")
	}
	if err := c.Auth(sasl.NewPlainClient("", sender, "secret")); err != nil {
		t.Fatal(err)
	}
	err := send(c, sender, []string{recipient}, bytes.Repeat([]byte("0123456789\r\n"), 500))
	if got := smtpCode(err); got != "552 5.3.4" {
		t.Fatalf("oversized message: got %s, want 552 5.3.4\n%s", got, logs)
	}
	if n := len(up.received()); n != 0 {
		t.Fatalf("upstream accepted %d messages, want 0", n)
	}
	if err := send(c, sender, []string{recipient}, testMessage); err != nil {
		t.Fatalf("a small message after the refused one: %v", err)
	}
}

func TestSMTPLongLines(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := loginSMTP(t, addr)
	// Longer than RFC 5321's 1000 octets, as generated HTML often is.
	long := []byte("Subject: html\r\n\r\n" + strings.Repeat("<td>x</td>", 2000) + "\r\n")
	if err := send(c, sender, []string{recipient}, long); err != nil {
		t.Fatalf("message with a 20000-octet line: %v", err)
	}
	tooLong := []byte("Subject: html\r\n\r\n" + strings.Repeat("<td>x</td>", 7000) + "\r\n")
	if got := smtpCode(send(c, sender, []string{recipient}, tooLong)); got != "554 5.6.0" {
		t.Fatalf("message with a 70000-octet line: got %s, want 554 5.6.0", got)
	}
	got := up.received()
	if len(got) != 1 || !bytes.Equal(got[0].data, long) {
		t.Fatalf("upstream got %d messages, want only the first", len(got))
	}
}

func TestSMTPLocalStartTLS(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	cert := proxytest.MustCert(t)
	_, addr, _ := startSMTPProxy(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert.Cert}}}, up, nil)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := gosmtp.NewClientStartTLS(conn, &tls.Config{RootCAs: cert.Pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", sender, "secret")); err != nil {
		t.Fatal(err)
	}
	if err := send(c, sender, []string{recipient}, testMessage); err != nil {
		t.Fatal(err)
	}
}

func TestSMTPImplicitTLSHandshakeTimeout(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{proxytest.MustCert(t).Cert}})
	srv, addr, logs := startSMTPProxy(t, Options{PreAuthTimeout: 100 * time.Millisecond}, up, tlsLn)
	c := proxytest.Dial(t, addr) // says nothing, not even its TLS hello
	// The session may not be counted yet when the dial returns: wait for
	// its end in the log, which says why, then for the count.
	proxytest.WaitFor(t, "the silent session to end for its handshake", func() bool {
		return strings.Contains(logs.String(), "tls handshake")
	})
	proxytest.WaitFor(t, "the silent session to be counted out", func() bool { return srv.Sessions() == 0 })
	c.ExpectClosed()

	tc, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: proxytest.MustCert(t).Pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	cl := gosmtp.NewClient(tc)
	if err := cl.Auth(sasl.NewPlainClient("", sender, "secret")); err != nil {
		t.Fatalf("AUTH over implicit TLS: %v", err)
	}
	if ok, _ := cl.Extension("STARTTLS"); ok {
		t.Fatalf("STARTTLS offered on an implicit-TLS connection")
	}
}

func TestSMTPBDAT(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := ehloClient(t, addr)
	c.Send("AUTH PLAIN " + proxytest.B64("\x00"+sender+"\x00secret") + "\r\n")
	c.Expect("235 ")
	c.Send("MAIL FROM:<" + sender + ">\r\nRCPT TO:<" + recipient + ">\r\n")
	c.Expect("250 ")
	c.Expect("250 ")
	half := len(testMessage) / 2
	c.Send("BDAT " + strconv.Itoa(half) + "\r\n" + string(testMessage[:half]))
	c.Expect("250 ")
	c.Send("BDAT " + strconv.Itoa(len(testMessage)-half) + " LAST\r\n" + string(testMessage[half:]))
	c.Expect("250 2.0.0 OK <Q1@upstream.test>")
	got := up.received()
	if len(got) != 1 || !bytes.Equal(got[0].data, testMessage) {
		t.Fatalf("upstream got %+v, want the message", got)
	}
}

// TestSMTPBareLF: a lone LF never ends the message, so no command can be
// smuggled inside one; upstream gets the text, with CRLF line ends.
func TestSMTPBareLF(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := ehloClient(t, addr)
	c.Send("AUTH PLAIN " + proxytest.B64("\x00"+sender+"\x00secret") + "\r\n")
	c.Expect("235 ")
	c.Send("MAIL FROM:<" + sender + ">\r\n")
	c.Expect("250 ")
	c.Send("RCPT TO:<" + recipient + ">\r\n")
	c.Expect("250 ")
	c.Send("DATA\r\n")
	c.Expect("354 ")
	c.Send("Subject: one\r\n\r\nbody\n.\nMAIL FROM:<" + sender + ">\nRCPT TO:<evil@example.org>\nDATA\nsmuggled\r\n.\r\n")
	c.Expect("250 2.0.0 OK <Q1@upstream.test>")
	c.Send("QUIT\r\n")
	c.Expect("221 ")
	got := up.received()
	if len(got) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(got))
	}
	want := "Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<" + sender + ">\r\nRCPT TO:<evil@example.org>\r\nDATA\r\nsmuggled\r\n"
	if string(got[0].data) != want || len(got[0].to) != 1 {
		t.Fatalf("upstream got %q to %v, want %q to %s", got[0].data, got[0].to, want, recipient)
	}
}

func TestSMTPMalformedInput(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	tests := []struct {
		name  string
		lines []string // sent one by one, each followed by its expected reply prefix
	}{
		{"unknown command", []string{"FOOO bar", "500 5.5.2 "}},
		{"short command", []string{"FO", "501 5.5.2 "}},
		{"MAIL before EHLO", []string{"MAIL FROM:<a@b>", "502 5.5.1 "}},
		{"bad MAIL syntax", []string{"EHLO x", "250", "MAIL TO:<a@b>", "501 5.5.2 "}},
		{"DATA without RCPT", []string{"EHLO x", "250", "DATA", "502 5.5.1 "}},
		{"RCPT without MAIL", []string{"EHLO x", "250", "RCPT TO:<a@b>", "502 5.5.1 "}},
		{"AUTH before EHLO", []string{"AUTH PLAIN " + proxytest.B64("\x00a\x00b"), "502 5.5.1 "}},
		{"NUL in command", []string{"EHLO x\x00y", "250"}},
		{"overlong line", []string{strings.Repeat("A", maxLineLength+1), "500 5.4.0 "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := proxytest.Dial(t, addr)
			c.Expect("220 ")
			for i := 0; i < len(tt.lines); i += 2 {
				c.Send(tt.lines[i] + "\r\n")
				l := c.Expect(tt.lines[i+1])
				for strings.HasPrefix(l, "250-") {
					l = c.Line()
				}
			}
		})
	}
	// The server survived all of it.
	loginSMTP(t, addr)
}

func TestSMTPShutdown(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	srv, addr, _ := startSMTPProxy(t, Options{}, up, nil)

	idle := loginSMTP(t, addr)
	busy := loginSMTP(t, addr)
	holding, release := up.holdData()
	result := make(chan error, 1)
	go func() { result <- send(busy, sender, []string{recipient}, testMessage) }()
	<-holding

	shutdown := make(chan error, 1)
	go func() { shutdown <- srv.Shutdown(context.Background()) }()
	proxytest.WaitFor(t, "shutdown to begin", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.closing
	})
	if err := idle.Noop(); err == nil {
		t.Fatalf("idle session still served during shutdown")
	}
	release()
	if err := <-result; err != nil {
		t.Fatalf("message in flight during shutdown: %v, want it accepted", err)
	}
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := len(up.received()); n != 1 {
		t.Fatalf("upstream got %d messages, want 1", n)
	}
}

func TestSMTPLogs(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, logs := startSMTPProxy(t, Options{}, up, nil)
	c := dialSMTP(t, addr)
	if err := c.Auth(sasl.NewLoginClient(sender, "secret")); err != nil {
		t.Fatal(err)
	}
	if err := send(c, sender, []string{recipient}, testMessage); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	proxytest.WaitFor(t, "session end", func() bool { return strings.Contains(logs.String(), "session end") })
	log := logs.String()
	for _, want := range []string{"session start", "message relayed", "rcpts=1", "bytes=" + strconv.Itoa(len(testMessage)),
		"queue_id=Q1@upstream.test", "messages=1", "account=" + sender} {
		if !strings.Contains(log, want) {
			t.Fatalf("log lacks %q:\n%s", want, log)
		}
	}
	for _, secret := range []string{"secret", proxytest.Token(sender), "Hello", "hidden dot"} {
		if strings.Contains(log, secret) {
			t.Fatalf("log contains %q:\n%s", secret, log)
		}
	}
}

func TestQueueID(t *testing.T) {
	tests := []struct{ reply, want string }{
		{"2.0.0 OK <DM6PR01MB1234.namprd01.prod.outlook.com> [Hostname=DM6PR01MB1234.namprd01.prod.outlook.com]", "DM6PR01MB1234.namprd01.prod.outlook.com"},
		{"2.0.0 Ok: queued as 4XbG2T1Lq3z9", "4XbG2T1Lq3z9"},
		{"2.0.0 OK", ""},
		{"2.0.0 <unterminated", ""},
	}
	for _, tt := range tests {
		if got := queueID(tt.reply); got != tt.want {
			t.Fatalf("queueID(%q): got %q, want %q", tt.reply, got, tt.want)
		}
	}
}

type panicSMTPAuth struct{}

func (panicSMTPAuth) Authenticate(context.Context, *proxy.Login) (*proxy.Upstream, error) {
	panic("boom")
}

func TestSMTPPanicRecovery(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, logs := startSMTPProxy(t, Options{Auth: panicSMTPAuth{}}, up, nil)
	c := dialSMTP(t, addr)
	if got := smtpCode(c.Auth(sasl.NewPlainClient("", sender, "secret"))); got != "421 4.0.0" {
		t.Fatalf("AUTH with a panicking Authenticator: got %s, want 421 4.0.0", got)
	}
	// go-smtp logs the panic after answering.
	proxytest.WaitFor(t, "the panic to be logged", func() bool { return strings.Contains(logs.String(), "session panic") })
	// Still serving.
	c2 := dialSMTP(t, addr)
	if err := c2.Hello("x"); err != nil {
		t.Fatal(err)
	}
}

func TestSMTPServeRequiresOptions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, opts := range []Options{
		{Auth: newSMTPStubAuth("")},
		{Upstream: "127.0.0.1:1"},
		{Upstream: "127.0.0.1:1", Auth: panicSMTPAuth{}, UnauthenticatedAs: "scanner@example.com"},
	} {
		if err := NewServer(&opts).Serve(ln); err == nil || errors.Is(err, proxy.ErrServerClosed) {
			t.Fatalf("Serve(%+v): got %v, want a configuration error", opts, err)
		}
	}
}

// TestSMTPDataEdges sends data that only a careful relay gets right, with a
// command pipelined after it, in clear, over implicit TLS (both read by the
// session itself) and after STARTTLS (read by go-smtp): upstream gets the
// same message each way.
func TestSMTPDataEdges(t *testing.T) {
	const data = "Subject: edges\r\n\r\n..\r\n...two\r\n.x\r\nbare\nLF\n.dot after LF\n.\r\ncr\ralone\r\n.\nend\r\n"
	const want = "Subject: edges\r\n\r\n.\r\n..two\r\nx\r\nbare\r\nLF\r\n.dot after LF\r\n.\r\ncr\ralone\r\n\r\nend\r\n"
	cert := proxytest.MustCert(t)
	clientTLS := &tls.Config{RootCAs: cert.Pool, ServerName: "localhost"}
	for _, mode := range []string{"clear", "implicit TLS", "STARTTLS"} {
		t.Run(mode, func(t *testing.T) {
			up := startSMTPStub(t, &smtpStub{})
			var ln net.Listener
			opts := Options{}
			switch mode {
			case "implicit TLS":
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				ln = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert.Cert}})
			case "STARTTLS":
				opts.TLS = &tls.Config{Certificates: []tls.Certificate{cert.Cert}}
			}
			_, addr, _ := startSMTPProxy(t, opts, up, ln)
			var c *proxytest.Client
			switch mode {
			case "clear":
				c = ehloClient(t, addr)
			case "implicit TLS":
				tc, err := tls.Dial("tcp", addr, clientTLS)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { tc.Close() })
				c = proxytest.NewClient(t, tc)
				c.Expect("220 ")
				c.Send("EHLO client.test\r\n")
				for !strings.HasPrefix(c.Line(), "250 ") {
				}
			case "STARTTLS":
				c = ehloClient(t, addr)
				c.Send("STARTTLS\r\n")
				c.Expect("220 ")
				tc := tls.Client(c.Conn, clientTLS)
				c = proxytest.NewClient(t, tc)
				c.Send("EHLO client.test\r\n")
				for !strings.HasPrefix(c.Line(), "250 ") {
				}
			}
			c.Send("AUTH PLAIN " + proxytest.B64("\x00"+sender+"\x00secret") + "\r\n")
			c.Expect("235 ")
			c.Send("MAIL FROM:<" + sender + ">\r\nRCPT TO:<" + recipient + ">\r\nDATA\r\n")
			c.Expect("250 ")
			c.Expect("250 ")
			c.Expect("354 ")
			c.Send(data + ".\r\nMAIL FROM:<" + sender + ">\r\n")
			c.Expect("250 2.0.0 OK <Q1@upstream.test>")
			c.Expect("250 ")
			// An empty message sent without waiting for 354, QUIT with it.
			c.Send("RCPT TO:<" + recipient + ">\r\nDATA\r\n.\r\nQUIT\r\n")
			c.Expect("250 ")
			c.Expect("354 ")
			c.Expect("250 2.0.0 OK <Q2@upstream.test>")
			c.Expect("221 ")
			got := up.received()
			if len(got) != 2 || string(got[0].data) != want {
				t.Fatalf("upstream got %d messages, the first %q; want it %q", len(got), got[0].data, want)
			}
		})
	}
}

// TestSMTPClientGoneDuringData: a client that leaves mid-message aborts it
// upstream; nothing is delivered.
func TestSMTPClientGoneDuringData(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, logs := startSMTPProxy(t, Options{}, up, nil)
	c := ehloClient(t, addr)
	c.Send("AUTH PLAIN " + proxytest.B64("\x00"+sender+"\x00secret") + "\r\n")
	c.Expect("235 ")
	c.Send("MAIL FROM:<" + sender + ">\r\nRCPT TO:<" + recipient + ">\r\nDATA\r\n")
	c.Expect("250 ")
	c.Expect("250 ")
	c.Expect("354 ")
	c.Send("Subject: half\r\n\r\nthe first half\r\n")
	c.Conn.Close()
	proxytest.WaitFor(t, "the aborted message in the log", func() bool {
		return strings.Contains(logs.String(), "client transfer failed")
	})
	if n := len(up.received()); n != 0 {
		t.Fatalf("upstream got %d messages, want none", n)
	}
}

// TestSMTPLongLineCloses: after a line too long in DATA, what follows could
// be data or commands; the session says so and closes.
func TestSMTPLongLineCloses(t *testing.T) {
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := ehloClient(t, addr)
	c.Send("AUTH PLAIN " + proxytest.B64("\x00"+sender+"\x00secret") + "\r\n")
	c.Expect("235 ")
	c.Send("MAIL FROM:<" + sender + ">\r\nRCPT TO:<" + recipient + ">\r\nDATA\r\n")
	c.Expect("250 ")
	c.Expect("250 ")
	c.Expect("354 ")
	c.Send("Subject: long\r\n\r\n" + strings.Repeat("x", maxLineLength+1) + "\r\n.\r\nRSET\r\n")
	c.Expect("554 5.6.0 ")
	c.Expect("500 5.4.0 ")
	c.ExpectClosed()
	if n := len(up.received()); n != 0 {
		t.Fatalf("upstream got %d messages, want none", n)
	}
}
