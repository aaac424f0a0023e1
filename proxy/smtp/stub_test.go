package smtp

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// smtpStub is an upstream submission server for the proxy's tests, after
// Exchange Online: STARTTLS, then AUTH XOAUTH2 with proxytest.Token(user).
type smtpStub struct {
	// ImplicitTLS serves TLS from the first byte; NoSTARTTLS serves plain
	// text only and still offers AUTH.
	ImplicitTLS, NoSTARTTLS bool
	// Reject refuses every token with this reply.
	Reject *gosmtp.SMTPError
	// Size is advertised as SIZE; 0 means go-smtp's bare SIZE.
	Size int64
	// ErrorChallenge sends the XOAUTH2 error challenge before refusing.
	ErrorChallenge bool
	// HashOnly keeps no message text, only its hash and size.
	HashOnly bool
	// Gate, if set, holds every DATA reply until it is closed.
	Gate chan struct{}

	srv  *gosmtp.Server
	ln   net.Listener
	addr string

	mu       sync.Mutex
	messages []stubMessage
	gated    int            // DATA replies waiting at Gate
	active   map[string]int // authenticated sessions per user
	peak     map[string]int
	sessions map[*stubSession]struct{}
	changed  chan struct{} // closed and replaced on every change

	auths     atomic.Int32 // AUTH attempts
	dropAfter atomic.Int64 // >0: the next DATA is cut after this many bytes
	hold      chan struct{}
	holding   chan struct{} // closed when a DATA reply is being held
}

type stubMessage struct {
	user, from string
	to         []string
	data       []byte
	sum        [32]byte
	size       int64
}

// stubKeepBytes bounds the message bytes the stub keeps; larger messages
// are only hashed, so that memory tests measure the proxy.
const stubKeepBytes = 1 << 20

func startSMTPStub(t testing.TB, s *smtpStub) *smtpStub {
	t.Helper()
	cert := proxytest.MustCert(t)
	s.active, s.peak = map[string]int{}, map[string]int{}
	s.sessions = map[*stubSession]struct{}{}
	s.changed = make(chan struct{})
	s.srv = gosmtp.NewServer(gosmtp.BackendFunc(s.newSession))
	s.srv.Domain = "upstream.test"
	s.srv.MaxMessageBytes = s.Size
	s.srv.MaxLineLength = 1 << 20
	s.srv.EnableSMTPUTF8 = true
	s.srv.ErrorLog = log.New(io.Discard, "", 0)
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert.Cert}}
	var err error
	switch {
	case s.ImplicitTLS:
		s.ln, err = tls.Listen("tcp", "127.0.0.1:0", tlsConf)
	case s.NoSTARTTLS:
		s.srv.AllowInsecureAuth = true
		s.ln, err = net.Listen("tcp", "127.0.0.1:0")
	default:
		s.srv.TLSConfig = tlsConf
		s.ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	s.addr = s.ln.Addr().String()
	go s.srv.Serve(s.ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *smtpStub) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitErr blocks until cond holds, under s.mu, or fails after 10 s. It
// returns the failure rather than calling t.Fatal, so that goroutines other
// than the test's may use it.
func (s *smtpStub) waitErr(what string, cond func() bool) error {
	timeout := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		ok, changed := cond(), s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-timeout:
			return fmt.Errorf("timed out waiting for upstream: %s", what)
		}
	}
}

func (s *smtpStub) received() []stubMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stubMessage(nil), s.messages...)
}

func (s *smtpStub) peakOf(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak[user]
}

// closeIdle drops every upstream connection, as a server ending idle
// sessions does.
func (s *smtpStub) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for x := range s.sessions {
		x.raw.Close()
	}
}

// holdData withholds the next DATA reply until release is called.
func (s *smtpStub) holdData() (holding <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold, s.holding = make(chan struct{}), make(chan struct{})
	var once sync.Once
	hold := s.hold
	return s.holding, func() { once.Do(func() { close(hold) }) }
}

type stubSession struct {
	s    *smtpStub
	conn *gosmtp.Conn
	// raw is the connection as the session started, read in go-smtp's
	// goroutine: Conn changes at STARTTLS.
	raw  net.Conn
	user string
	from string
	to   []string
}

func (s *smtpStub) newSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	x := &stubSession{s: s, conn: c, raw: c.Conn()}
	s.mu.Lock()
	s.sessions[x] = struct{}{}
	s.mu.Unlock()
	return x, nil
}

func (x *stubSession) AuthMechanisms() []string { return []string{xoauth2.Mechanism} }

func (x *stubSession) Auth(mech string) (sasl.Server, error) {
	if mech != xoauth2.Mechanism {
		return nil, gosmtp.ErrAuthUnknownMechanism
	}
	x.s.auths.Add(1)
	check := func(user, token string) error {
		if x.s.Reject != nil {
			return x.s.Reject
		}
		if token != proxytest.Token(user) {
			return &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
		}
		x.user = user
		x.s.mu.Lock()
		defer x.s.mu.Unlock()
		x.s.active[user]++
		x.s.peak[user] = max(x.s.peak[user], x.s.active[user])
		x.s.notify()
		return nil
	}
	if x.s.ErrorChallenge {
		return smtpErrors{xoauth2.NewServer(check, nil)}, nil
	}
	return directXOAUTH2(check), nil
}

// directXOAUTH2 refuses a token at once, as Exchange's SMTP does, without
// an error challenge.
type directXOAUTH2 func(user, token string) error

func (f directXOAUTH2) Next(r []byte) ([]byte, bool, error) {
	if r == nil {
		return []byte{}, false, nil
	}
	user, token, err := xoauth2.ParseResponse(r)
	if err == nil {
		err = f(user, token)
	}
	var se *gosmtp.SMTPError
	if err != nil && !errors.As(err, &se) {
		err = &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
	}
	return nil, true, err
}

// smtpErrors makes any failure of the XOAUTH2 server an SMTP reply.
type smtpErrors struct{ sasl.Server }

func (s smtpErrors) Next(r []byte) ([]byte, bool, error) {
	c, done, err := s.Server.Next(r)
	var se *gosmtp.SMTPError
	if err != nil && !errors.As(err, &se) {
		err = &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
	}
	return c, done, err
}

func (x *stubSession) Mail(from string, opts *gosmtp.MailOptions) error {
	if x.user == "" {
		return &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail"}
	}
	if !strings.EqualFold(from, x.user) {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}
	}
	x.from = from
	return nil
}

func (x *stubSession) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	if strings.HasPrefix(to, "hangup") {
		return &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "Service not available, closing transmission channel"}
	}
	if strings.HasPrefix(to, "reject") {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 10}, Message: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}
	}
	x.to = append(x.to, to)
	return nil
}

func (x *stubSession) Data(r io.Reader) error {
	h := sha256.New()
	var kept []byte
	var n int64
	buf := make([]byte, 32<<10)
	drop := x.s.dropAfter.Swap(0)
	for {
		m, err := r.Read(buf)
		h.Write(buf[:m])
		if n < stubKeepBytes && !x.s.HashOnly {
			kept = append(kept, buf[:min(m, int(stubKeepBytes-n))]...)
		}
		n += int64(m)
		if drop > 0 && n >= drop {
			x.conn.Conn().Close()
			return errors.New("dropped")
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	x.s.mu.Lock()
	hold, holding := x.s.hold, x.s.holding
	x.s.hold, x.s.holding = nil, nil
	x.s.mu.Unlock()
	if hold != nil {
		close(holding)
		<-hold
	}
	if x.s.Gate != nil {
		x.s.mu.Lock()
		x.s.gated++
		x.s.notify()
		x.s.mu.Unlock()
		<-x.s.Gate
	}
	msg := stubMessage{user: x.user, from: x.from, to: x.to, size: n}
	copy(msg.sum[:], h.Sum(nil))
	if n <= stubKeepBytes {
		msg.data = kept
	}
	x.s.mu.Lock()
	defer x.s.mu.Unlock()
	x.s.messages = append(x.s.messages, msg)
	x.s.notify()
	return &gosmtp.SMTPError{Code: 250, EnhancedCode: gosmtp.EnhancedCode{2, 0, 0},
		Message: fmt.Sprintf("OK <Q%d@upstream.test> [Hostname=upstream.test]", len(x.s.messages))}
}

func (x *stubSession) Reset() { x.from, x.to = "", nil }

func (x *stubSession) Logout() error {
	x.s.mu.Lock()
	defer x.s.mu.Unlock()
	if _, ok := x.s.sessions[x]; !ok {
		return nil
	}
	delete(x.s.sessions, x)
	if x.user != "" {
		x.s.active[x.user]--
	}
	x.s.notify()
	return nil
}

// smtpStubAuth is proxytest.Auth for SMTP logins; AuthenticateAccount logs in
// upstream as any account without a password.
type smtpStubAuth struct{ proxytest.Auth }

func newSMTPStubAuth(pass string) *smtpStubAuth {
	return &smtpStubAuth{proxytest.Auth{Pass: pass, Protocol: proxy.SMTP}}
}

func (a *smtpStubAuth) AuthenticateAccount(ctx context.Context, p proxy.Protocol, account string) (*proxy.Upstream, error) {
	a.Calls.Add(1)
	return &proxy.Upstream{Account: account, SASL: xoauth2.NewClient(account, proxytest.Token(account))}, nil
}

// startSMTPProxy starts an Server on ln (127.0.0.1:0 if nil) in front
// of up. opts.Upstream, UpstreamTLS, Auth and Logger have test defaults.
func startSMTPProxy(t testing.TB, opts Options, up *smtpStub, ln net.Listener) (*Server, string, *proxytest.LogBuffer) {
	t.Helper()
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Upstream == "" {
		opts.Upstream = up.addr
		opts.UpstreamImplicitTLS = up.ImplicitTLS
	}
	if opts.UpstreamTLS == nil {
		opts.UpstreamTLS = &tls.Config{RootCAs: proxytest.MustCert(t).Pool}
	}
	if opts.Auth == nil {
		opts.Auth = newSMTPStubAuth("secret")
	}
	var logs *proxytest.LogBuffer
	if opts.Logger == nil {
		opts.Logger, logs = proxytest.NewLogger(t)
	}
	srv := NewServer(&opts)
	proxytest.Serve(t, srv, ln)
	return srv, ln.Addr().String(), logs
}

// dialSMTP connects a go-smtp client to the proxy.
func dialSMTP(t testing.TB, addr string) *gosmtp.Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := gosmtp.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c
}

// loginSMTP connects a go-smtp client to the proxy and logs in as sender.
func loginSMTP(t testing.TB, addr string) *gosmtp.Client {
	t.Helper()
	c := dialSMTP(t, addr)
	if err := c.Auth(sasl.NewPlainClient("", sender, "secret")); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	return c
}

// ehloClient connects a raw client to the proxy and greets it with EHLO.
func ehloClient(t testing.TB, addr string) *proxytest.Client {
	t.Helper()
	c := proxytest.Dial(t, addr)
	c.Expect("220 ")
	c.Send("EHLO client.test\r\n")
	for !strings.HasPrefix(c.Line(), "250 ") {
	}
	return c
}

// smtpCode returns err's SMTP code and enhanced code as "535 5.7.8", or
// err's text for other errors.
func smtpCode(err error) string {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %s", se.Code, enhancedString(se.EnhancedCode))
	}
	if err == nil {
		return "ok"
	}
	return err.Error()
}
