package smtp

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/imap"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// trickle writes s one byte per tick until s runs out, stop is closed or a
// write fails. It runs in its own goroutine and reports nothing: the
// reader on the test's goroutine sees what the server did.
func trickle(c net.Conn, s string, tick time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for i := 0; i < len(s); i++ {
		select {
		case <-t.C:
		case <-stop:
			return
		}
		if _, err := c.Write([]byte{s[i]}); err != nil {
			return
		}
	}
}

// readUntilClosed reads lines until the server closes the connection and
// returns them with the time the close came.
func readUntilClosed(t *testing.T, c net.Conn) ([]string, time.Time) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	var lines []string
	for {
		l, err := br.ReadString('\n')
		if l != "" {
			lines = append(lines, strings.TrimSuffix(l, "\r\n"))
		}
		if err != nil {
			if err != io.EOF && !proxytest.IsConnReset(err) {
				t.Fatalf("reading until close: %v (got %q)", err, lines)
			}
			return lines, time.Now()
		}
	}
}

func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startIMAPProxy starts an IMAP server on 127.0.0.1 for the tests of limits
// shared by the protocols; opts.UpstreamTLS defaults to trusting the test
// certificate and opts.Logger to a buffer.
func startIMAPProxy(t testing.TB, opts imap.Options) (*imap.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if opts.UpstreamTLS == nil {
		opts.UpstreamTLS = &tls.Config{RootCAs: proxytest.MustCert(t).Pool}
	}
	if opts.Logger == nil {
		opts.Logger, _ = proxytest.NewLogger(t)
	}
	srv := imap.NewServer(&opts)
	proxytest.Serve(t, srv, ln)
	return srv, ln.Addr().String()
}

// TestPreAuthLimitTricklingClient: a client that trickles a byte at a time,
// or sends complete commands at a steady pace, without ever logging in, is
// closed at the pre-auth limit counted from its connection, by both
// protocols.
func TestPreAuthLimitTricklingClient(t *testing.T) {
	const limit = time.Second
	const tick = 100 * time.Millisecond
	imapLog, imapLogs := proxytest.NewLogger(t)
	imapSrv, imapAddr := startIMAPProxy(t, imap.Options{Auth: &proxytest.Auth{}, Upstream: "127.0.0.1:1", PreAuthTimeout: limit, Logger: imapLog})
	up := startSMTPStub(t, &smtpStub{})
	// ReadTimeout far above the limit: only the pre-auth limit can end
	// these sessions in time.
	smtpAuth := newSMTPStubAuth("secret")
	smtpSrv, smtpAddr, smtpLogs := startSMTPProxy(t, Options{PreAuthTimeout: limit, ReadTimeout: time.Minute, Auth: smtpAuth}, up, nil)

	tests := []struct {
		name, addr, input, want string
	}{
		{"imap bytes", imapAddr, "a LOGIN alice " + strings.Repeat("x", 100), "* BYE Autologout"},
		{"imap commands", imapAddr, strings.Repeat("a NOOP\r\n", 20), "* BYE Autologout"},
		{"smtp bytes", smtpAddr, "EHLO " + strings.Repeat("x", 100), "421 4.4.2"},
		{"smtp commands", smtpAddr, strings.Repeat("NOOP\r\n", 30), "421 4.4.2"},
		// Cut short at the limit, the AUTH is not acted on.
		{"smtp auth", smtpAddr, "EHLO x\r\nAUTH PLAIN " + proxytest.B64("\x00"+sender+"\x00secret"), "421 4.4.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			c, err := net.Dial("tcp", tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			stop := make(chan struct{})
			defer close(stop)
			go trickle(c, tt.input, tick, stop)
			lines, closed := readUntilClosed(t, c)
			took := closed.Sub(start)
			t.Logf("closed after %v; last line %q", took.Round(time.Millisecond), lines[len(lines)-1])
			if last := lines[len(lines)-1]; !strings.HasPrefix(last, tt.want) {
				t.Fatalf("last line %q, want %q (all: %q)", last, tt.want, lines)
			}
			if took < limit-50*time.Millisecond || took > limit+time.Second {
				t.Fatalf("closed after %v, want about %v", took, limit)
			}
		})
	}
	if st := imapSrv.Stats(); st.PreAuthTimeouts != 2 {
		t.Errorf("IMAP Stats: %+v, want 2 pre-auth timeouts", st)
	}
	proxytest.WaitFor(t, "SMTP sessions to end", func() bool { return smtpSrv.Sessions() == 0 })
	if st := smtpSrv.Stats(); st.PreAuthTimeouts != 3 {
		t.Errorf("SMTP Stats: %+v, want 3 pre-auth timeouts", st)
	}
	if n := smtpAuth.Calls.Load(); n != 0 {
		t.Errorf("Authenticate called %d times", n)
	}
	if n := strings.Count(imapLogs.String(), `reason="pre-login time limit"`); n != 2 {
		t.Errorf("IMAP log has %d pre-login time limit ends, want 2:\n%s", n, imapLogs)
	}
	if n := strings.Count(smtpLogs.String(), "not authenticated in time"); n != 3 {
		t.Errorf("SMTP log has %d pre-auth closes, want 3:\n%s", n, smtpLogs)
	}
}

// TestSMTPCommandDeadline: once authenticated, a client may stay as long
// as it completes commands, but one command trickled a byte at a time is
// bounded from its first byte (ReadTimeout), not per read.
func TestSMTPCommandDeadline(t *testing.T) {
	const preAuth, perCommand = 300 * time.Millisecond, time.Second
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{PreAuthTimeout: preAuth, ReadTimeout: perCommand}, up, nil)
	c := proxytest.Dial(t, addr)
	c.Expect("220 ")
	c.Send("EHLO x\r\n")
	for l := c.Line(); !strings.HasPrefix(l, "250 "); l = c.Line() {
	}
	c.Send("AUTH PLAIN " + proxytest.B64("\x00"+sender+"\x00secret") + "\r\n")
	c.Expect("235 ")

	// Past the pre-auth limit and past one command's limit in total,
	// each command complete within it: the session goes on.
	tk := time.NewTicker(perCommand / 3)
	for range 6 {
		<-tk.C
		c.Send("NOOP\r\n")
		c.Expect("250 ")
	}
	tk.Stop()

	stop := make(chan struct{})
	defer close(stop)
	start := time.Now()
	go trickle(c.Conn, "NOOP"+strings.Repeat(" ", 100), perCommand/5, stop)
	// The command cut short may get a reply of its own (go-smtp takes the
	// part of a line read before a timeout as a line); then 421.
	if l := c.Line(); !strings.HasPrefix(l, "421 4.4.2") {
		c.Expect("421 4.4.2")
	}
	took := time.Since(start)
	t.Logf("trickled command cut after %v", took.Round(time.Millisecond))
	if took < perCommand-50*time.Millisecond || took > perCommand+time.Second {
		t.Fatalf("trickled command cut after %v, want about %v", took, perCommand)
	}
}

// TestSMTPUnauthenticatedAsEndsPreAuth: with UnauthenticatedAs, a
// loopback client's first MAIL ends its pre-auth phase.
func TestSMTPUnauthenticatedAsEndsPreAuth(t *testing.T) {
	const preAuth = 300 * time.Millisecond
	up := startSMTPStub(t, &smtpStub{})
	_, addr, _ := startSMTPProxy(t, Options{UnauthenticatedAs: "scanner@example.com", PreAuthTimeout: preAuth}, up, nil)
	c := proxytest.Dial(t, addr)
	c.Expect("220 ")
	c.Send("HELO x\r\nMAIL FROM:<scanner@example.com>\r\n")
	c.Expect("250 ")
	c.Expect("250 ")
	// The pre-auth limit passes with nothing to read.
	c.Conn.SetReadDeadline(time.Now().Add(3 * preAuth))
	if _, err := c.R.ReadByte(); !proxy.IsTimeout(err) {
		t.Fatalf("session ended at the pre-auth limit after MAIL: %v", err)
	}
	c.Conn.SetDeadline(time.Now().Add(10 * time.Second))
	c.Send("RCPT TO:<" + recipient + ">\r\n")
	c.Expect("250 ")
}

// TestConnLimits: one limiter caps IMAP and SMTP together, in total and
// per source address (loopback too); refusals get their protocol's line,
// one log line each and a count.
func TestConnLimits(t *testing.T) {
	lim := proxy.NewConnLimiter(3, 2)
	imapLog, imapLogs := proxytest.NewLogger(t)
	imapSrv, imapAddr := startIMAPProxy(t, imap.Options{Auth: &proxytest.Auth{}, Upstream: "127.0.0.1:1", Limiter: lim, Logger: imapLog})
	up := startSMTPStub(t, &smtpStub{})
	smtpSrv, smtpAddr, smtpLogs := startSMTPProxy(t, Options{Limiter: lim}, up, nil)

	open := func(src, addr, greeting string) net.Conn {
		t.Helper()
		c := dialFrom(t, src, addr)
		tc := proxytest.NewClient(t, c)
		tc.Expect(greeting)
		return c
	}
	refused := func(src, addr, want string) {
		t.Helper()
		lines, _ := readUntilClosed(t, dialFrom(t, src, addr))
		if len(lines) != 1 || lines[0] != want {
			t.Fatalf("refused connection from %s got %q, want just %q", src, lines, want)
		}
	}
	a1 := open("127.0.0.1", imapAddr, "* OK ")
	open("127.0.0.1", smtpAddr, "220 ")
	refused("127.0.0.1", imapAddr, "* BYE Too many connections")
	refused("127.0.0.1", smtpAddr, "421 4.7.0 Too many connections")
	open("127.0.0.2", smtpAddr, "220 ")
	refused("127.0.0.3", imapAddr, "* BYE Too many connections")
	refused("127.0.0.3", smtpAddr, "421 4.7.0 Too many connections")
	if n := lim.Connections(); n != 3 {
		t.Fatalf("limiter counts %d connections, want 3", n)
	}

	// A connection that ends frees its place.
	a1.Close()
	proxytest.WaitFor(t, "the IMAP session to end", func() bool { return imapSrv.Sessions() == 0 })
	open("127.0.0.1", imapAddr, "* OK ")

	is, ss := imapSrv.Stats(), smtpSrv.Stats()
	if is.RefusedPerSource != 1 || is.RefusedMaxConnections != 1 || ss.RefusedPerSource != 1 || ss.RefusedMaxConnections != 1 {
		t.Fatalf("Stats: IMAP %+v, SMTP %+v; want one refusal of each kind each", is, ss)
	}
	for _, logs := range []*proxytest.LogBuffer{imapLogs, smtpLogs} {
		out := logs.String()
		if n := strings.Count(out, "connection refused"); n != 2 {
			t.Fatalf("%d refusal lines, want 2:\n%s", n, out)
		}
		for _, want := range []string{
			"reason=max_connections_per_source remote=127.0.0.1:",
			"reason=max_connections remote=127.0.0.3:",
		} {
			if !strings.Contains(out, want) {
				t.Fatalf("log lacks %q:\n%s", want, out)
			}
		}
	}
}
