package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// testCert is a self-signed certificate for 127.0.0.1 and a pool trusting
// it.
type testCert struct {
	cert tls.Certificate
	pem  []byte
	pool *x509.CertPool
}

func newTestCert() (*testCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "proxy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return certFromDER(der, key)
}

func certFromDER(der []byte, key *ecdsa.PrivateKey) (*testCert, error) {
	c := &testCert{
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pool: x509.NewCertPool(),
	}
	if !c.pool.AppendCertsFromPEM(c.pem) {
		return nil, errors.New("bad certificate")
	}
	return c, nil
}

var (
	sharedCertOnce sync.Once
	sharedCert     *testCert
)

func mustCert(t testing.TB) *testCert {
	t.Helper()
	sharedCertOnce.Do(func() {
		var err error
		if sharedCert, err = newTestCert(); err != nil {
			panic(err)
		}
	})
	return sharedCert
}

// stubToken is the token the stub upstream accepts for user.
func stubToken(user string) string { return "token-for-" + user }

// stubUpstream speaks just enough IMAP for the proxy: a greeting,
// CAPABILITY, AUTHENTICATE XOAUTH2, and after login NOOP, IDLE, APPEND,
// FETCH (of a size: "FETCH <n>") and LOGOUT; other commands get an OK.
type stubUpstream struct {
	// Greeting is the greeting line.
	Greeting string
	// PreCaps and Caps are the capabilities before and after login.
	PreCaps, Caps string
	// CapsInOK puts Caps in the OK to AUTHENTICATE.
	CapsInOK bool
	// AfterLogin is sent right after the OK to AUTHENTICATE.
	AfterLogin string
	// Reject, if set, refuses every token with this status and text
	// after the error challenge, e.g. "NO AUTHENTICATE failed.".
	Reject string
	// CapFail, if set, is the answer to CAPABILITY after login.
	CapFail string

	ln   net.Listener
	cert *testCert
	addr string

	logins     atomic.Int32
	inlineIR   atomic.Int32 // AUTHENTICATE with an initial response
	continueIR atomic.Int32 // AUTHENTICATE answered after "+"

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func defaultStub() *stubUpstream {
	return &stubUpstream{
		Greeting: "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] stub ready",
		PreCaps:  "IMAP4rev1 SASL-IR AUTH=XOAUTH2",
		Caps:     "IMAP4rev1 IDLE LITERAL+ UIDPLUS",
		CapsInOK: true,
	}
}

// start listens on 127.0.0.1 with TLS.
func (s *stubUpstream) start(cert *testCert) error {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert.cert}})
	if err != nil {
		return err
	}
	s.ln, s.cert, s.addr = ln, cert, ln.Addr().String()
	s.conns = make(map[net.Conn]struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				s.serveConn(c)
			}()
		}
	}()
	return nil
}

func (s *stubUpstream) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func startStub(t testing.TB, s *stubUpstream) *stubUpstream {
	t.Helper()
	if err := s.start(mustCert(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

var fetchPattern = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte('a' + i%26)
		if i%78 == 77 {
			b[i] = '\n'
		}
	}
	return b
}()

func (s *stubUpstream) serveConn(c net.Conn) {
	br := bufio.NewReader(c)
	write := func(lines ...string) error {
		_, err := io.WriteString(c, strings.Join(lines, "\r\n")+"\r\n")
		return err
	}
	readLine := func() (string, error) {
		l, err := br.ReadString('\n')
		return strings.TrimRight(l, "\r\n"), err
	}
	if write(s.Greeting) != nil {
		return
	}
	authed := false
	for {
		line, err := readLine()
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(line, " ")
		name, args, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(name) {
		case "CAPABILITY":
			switch {
			case authed && s.CapFail != "":
				err = write(tag + " " + s.CapFail)
			case authed:
				err = write("* CAPABILITY "+s.Caps, tag+" OK CAPABILITY completed")
			default:
				err = write("* CAPABILITY "+s.PreCaps, tag+" OK CAPABILITY completed")
			}
		case "AUTHENTICATE":
			authed, err = s.authenticate(c, tag, args, write, readLine)
		case "NOOP":
			err = write(tag + " OK NOOP done by stub")
		case "IDLE":
			if err = write("+ idling", "* 1 EXISTS"); err != nil {
				return
			}
			if l, err := readLine(); err != nil || l != "DONE" {
				return
			}
			err = write(tag + " OK IDLE terminated")
		case "APPEND":
			n, sync, ok := stubLiteral(args)
			if !ok {
				err = write(tag + " BAD no literal")
				break
			}
			if sync {
				if err = write("+ Ready for literal data"); err != nil {
					return
				}
			}
			h := sha256.New()
			if _, err = io.CopyN(h, br, n); err != nil {
				return
			}
			if _, err = readLine(); err != nil {
				return
			}
			err = write(fmt.Sprintf("%s OK APPEND %d %s", tag, n, hex.EncodeToString(h.Sum(nil))))
		case "FETCH":
			n, _ := strconv.Atoi(args)
			err = s.fetch(c, tag, n)
		case "LOGOUT":
			write("* BYE stub logging out", tag+" OK LOGOUT completed")
			return
		default:
			err = write(tag + " OK " + name + " done by stub")
		}
		if err != nil {
			return
		}
	}
}

// stubLiteral parses the "{n}" or "{n+}" ending args.
func stubLiteral(args string) (n int64, sync, ok bool) {
	i := strings.LastIndexByte(args, '{')
	if i < 0 || !strings.HasSuffix(args, "}") {
		return 0, false, false
	}
	m := args[i+1 : len(args)-1]
	m, plus := strings.CutSuffix(m, "+")
	n, err := strconv.ParseInt(m, 10, 64)
	return n, !plus, err == nil
}

// fetch sends n bytes of fetchPattern as a message body.
func (s *stubUpstream) fetch(c net.Conn, tag string, n int) error {
	if _, err := fmt.Fprintf(c, "* 1 FETCH (BODY[] {%d}\r\n", n); err != nil {
		return err
	}
	for n > 0 {
		m := min(n, len(fetchPattern))
		if _, err := c.Write(fetchPattern[:m]); err != nil {
			return err
		}
		n -= m
	}
	_, err := io.WriteString(c, ")\r\n"+tag+" OK FETCH completed\r\n")
	return err
}

func (s *stubUpstream) authenticate(c net.Conn, tag, args string, write func(...string) error, readLine func() (string, error)) (bool, error) {
	mech, ir, hasIR := strings.Cut(args, " ")
	if !strings.EqualFold(mech, "XOAUTH2") {
		return false, write(tag + " NO unsupported mechanism")
	}
	if hasIR {
		s.inlineIR.Add(1)
	} else {
		s.continueIR.Add(1)
		if err := write("+ "); err != nil {
			return false, err
		}
		var err error
		if ir, err = readLine(); err != nil {
			return false, err
		}
	}
	resp, err := base64.StdEncoding.DecodeString(ir)
	if err != nil {
		return false, write(tag + " BAD invalid base64")
	}
	srv := xoauth2.NewServer(func(user, token string) error {
		if s.Reject != "" || token != stubToken(user) {
			return errors.New("bad token")
		}
		return nil
	}, nil)
	chal, done, err := srv.Next(resp)
	for !done && err == nil {
		if err := write("+ " + base64.StdEncoding.EncodeToString(chal)); err != nil {
			return false, err
		}
		l, rerr := readLine()
		if rerr != nil {
			return false, rerr
		}
		if resp, rerr = base64.StdEncoding.DecodeString(l); rerr != nil {
			return false, write(tag + " BAD invalid base64")
		}
		chal, done, err = srv.Next(resp)
	}
	if err != nil {
		reply := s.Reject
		if reply == "" {
			reply = "NO AUTHENTICATE failed."
		}
		return false, write(tag + " " + reply)
	}
	s.logins.Add(1)
	ok := tag + " OK AUTHENTICATE completed."
	if s.CapsInOK {
		ok = tag + " OK [CAPABILITY " + s.Caps + "] AUTHENTICATE completed."
	}
	if err := write(ok); err != nil {
		return false, err
	}
	if s.AfterLogin != "" {
		if _, err := io.WriteString(c, s.AfterLogin); err != nil {
			return false, err
		}
	}
	return true, nil
}

// stubAuth accepts any user but "unknown" with password pass, and logs in
// upstream as that user with stubToken(user).
type stubAuth struct {
	pass string
	err  error // returned instead of an Upstream for good credentials
	// protocol is the one logins must name; "" means IMAP.
	protocol Protocol

	// retry is UpstreamRejected's answer; staleFirst makes the first
	// upstream token one that upstream refuses, as an expired one.
	retry, staleFirst bool

	calls    atomic.Int32
	mu       sync.Mutex
	rejected []string // "account: detail"
}

func (a *stubAuth) Authenticate(ctx context.Context, l *Login) (*Upstream, error) {
	a.calls.Add(1)
	want := a.protocol
	if want == "" {
		want = IMAP
	}
	if l.Protocol != want || l.Remote == nil {
		return nil, fmt.Errorf("bad login %+v", l)
	}
	switch {
	case l.Username == "unknown":
		return nil, &LoginError{Kind: KindCredentials, Reason: "no such user", Err: errors.New("user unknown not found")}
	case l.Password != a.pass:
		return nil, &LoginError{Kind: KindCredentials, Reason: "wrong password", Err: errors.New("password mismatch")}
	case a.err != nil:
		return nil, a.err
	}
	tok := stubToken(l.Username)
	if a.staleFirst && a.calls.Load() == 1 {
		tok = "stale-" + tok
	}
	return &Upstream{Account: l.Username, SASL: xoauth2.NewClient(l.Username, tok)}, nil
}

func (a *stubAuth) UpstreamRejected(account, detail string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rejected = append(a.rejected, account+": "+detail)
	return a.retry
}

func (a *stubAuth) rejections() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.rejected...)
}

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// startProxy starts an IMAPServer on 127.0.0.1. opts.Upstream defaults to
// up's address and opts.UpstreamTLS to trusting the test certificate.
func startProxy(t testing.TB, opts IMAPOptions, up *stubUpstream) (*IMAPServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveProxy(t, opts, up, ln), ln.Addr().String()
}

func serveProxy(t testing.TB, opts IMAPOptions, up *stubUpstream, ln net.Listener) *IMAPServer {
	t.Helper()
	if opts.Upstream == "" && up != nil {
		opts.Upstream = up.addr
	}
	if opts.UpstreamTLS == nil {
		opts.UpstreamTLS = &tls.Config{RootCAs: mustCert(t).pool}
	}
	if opts.Logger == nil {
		opts.Logger, _ = newTestLogger(t)
	}
	srv := NewIMAPServer(&opts)
	serveUntilCleanup(t, srv, ln)
	return srv
}

// testServer is what the tests need of IMAPServer and SMTPServer.
type testServer interface {
	Serve(net.Listener) error
	Close() error
	Sessions() int
}

// serveUntilCleanup serves ln until the test ends, then closes srv and
// checks that Serve returned as documented and every session ended.
func serveUntilCleanup(t testing.TB, srv testServer, ln net.Listener) {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: got %v, want ErrServerClosed", err)
		}
		waitFor(t, "sessions to end", func() bool { return srv.Sessions() == 0 })
	})
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// testClient is a raw IMAP client.
type testClient struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialClient(t testing.TB, addr string) *testClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return newTestClient(t, c)
}

func newTestClient(t testing.TB, c net.Conn) *testClient {
	// A bound on every exchange: a broken proxy fails the test instead of
	// hanging it.
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &testClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (c *testClient) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

func (c *testClient) line() string {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: got %q, %v", l, err)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads a line and checks that it starts with prefix.
func (c *testClient) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want prefix %q", l, prefix)
	}
	return l
}

// expectClosed checks that the proxy closes the connection with nothing
// more to say.
func (c *testClient) expectClosed() {
	c.t.Helper()
	rest, err := io.ReadAll(c.br)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isConnReset(err) {
		c.t.Fatalf("waiting for close: %v (read %q)", err, rest)
	}
	if len(rest) > 0 {
		c.t.Fatalf("got %q before close, want nothing", rest)
	}
}

func isConnReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// greet reads the greeting.
func (c *testClient) greet() string {
	c.t.Helper()
	return c.expect("* OK [CAPABILITY IMAP4rev1 ")
}

// login greets and logs in with LOGIN.
func (c *testClient) login(user, pass string) {
	c.t.Helper()
	c.greet()
	c.send("L1 LOGIN " + user + " " + pass + "\r\n")
	c.expect("L1 OK [CAPABILITY ")
}
