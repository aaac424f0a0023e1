// Package proxytest holds the test helpers that proxy/imap and proxy/smtp
// share: a self-signed certificate, a stub Authenticator, a log buffer, a
// raw line client and a server runner that checks its teardown.
package proxytest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// Cert is a self-signed certificate for 127.0.0.1 and a pool trusting
// it.
type Cert struct {
	Cert tls.Certificate
	PEM  []byte
	Pool *x509.CertPool
}

// NewCert returns a new self-signed certificate.
func NewCert() (*Cert, error) {
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

func certFromDER(der []byte, key *ecdsa.PrivateKey) (*Cert, error) {
	c := &Cert{
		Cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		PEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Pool: x509.NewCertPool(),
	}
	if !c.Pool.AppendCertsFromPEM(c.PEM) {
		return nil, errors.New("bad certificate")
	}
	return c, nil
}

var (
	sharedCertOnce sync.Once
	sharedCert     *Cert
)

// MustCert returns the certificate the tests of a package share.
func MustCert(t testing.TB) *Cert {
	t.Helper()
	sharedCertOnce.Do(func() {
		var err error
		if sharedCert, err = NewCert(); err != nil {
			panic(err)
		}
	})
	return sharedCert
}

// Token is the token the stub upstreams accept for user.
func Token(user string) string { return "token-for-" + user }

// B64 encodes s in base64, as SASL responses are sent.
func B64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// Auth accepts any user but "unknown" with password Pass, and logs in
// upstream as that user with Token(user).
type Auth struct {
	Pass string
	Err  error // returned instead of an Upstream for good credentials
	// Protocol is the one logins must name; "" means IMAP.
	Protocol proxy.Protocol

	// Retry is UpstreamRejected's answer; StaleFirst makes the first
	// upstream token one that upstream refuses, as an expired one.
	Retry, StaleFirst bool

	Calls    atomic.Int32
	mu       sync.Mutex
	rejected []string // "account: detail"
}

func (a *Auth) Authenticate(ctx context.Context, l *proxy.Login) (*proxy.Upstream, error) {
	a.Calls.Add(1)
	want := a.Protocol
	if want == "" {
		want = proxy.IMAP
	}
	if l.Protocol != want || l.Remote == nil {
		return nil, fmt.Errorf("bad login %+v", l)
	}
	switch {
	case l.Username == "unknown":
		return nil, &proxy.LoginError{Kind: proxy.KindCredentials, Reason: "no such user", Err: errors.New("user unknown not found")}
	case l.Password != a.Pass:
		return nil, &proxy.LoginError{Kind: proxy.KindCredentials, Reason: "wrong password", Err: errors.New("password mismatch")}
	case a.Err != nil:
		return nil, a.Err
	}
	tok := Token(l.Username)
	if a.StaleFirst && a.Calls.Load() == 1 {
		tok = "stale-" + tok
	}
	return &proxy.Upstream{Account: l.Username, SASL: xoauth2.NewClient(l.Username, tok)}, nil
}

func (a *Auth) UpstreamRejected(account, detail string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rejected = append(a.rejected, account+": "+detail)
	return a.Retry
}

// Rejections returns what UpstreamRejected was told, as "account: detail".
func (a *Auth) Rejections() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.rejected...)
}

// LogBuffer collects log output safely across goroutines.
type LogBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// NewLogger returns a logger of every level into a LogBuffer.
func NewLogger(t testing.TB) (*slog.Logger, *LogBuffer) {
	buf := &LogBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// Server is what the tests need of a protocol server.
type Server interface {
	Serve(net.Listener) error
	Close() error
	Sessions() int
}

// Serve serves ln until the test ends, then closes srv and checks that
// Serve returned as documented and every session ended.
func Serve(t testing.TB, srv Server, ln net.Listener) {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("Serve: got %v, want ErrServerClosed", err)
		}
		WaitFor(t, "sessions to end", func() bool { return srv.Sessions() == 0 })
	})
}

// WaitFor polls cond until it holds, failing the test after 10 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Client is a raw line client.
type Client struct {
	T    testing.TB
	Conn net.Conn
	R    *bufio.Reader
}

// Dial connects a Client to addr, closed when the test ends.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return NewClient(t, c)
}

// NewClient returns a Client on c.
func NewClient(t testing.TB, c net.Conn) *Client {
	// A bound on every exchange: a broken proxy fails the test instead of
	// hanging it.
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &Client{T: t, Conn: c, R: bufio.NewReader(c)}
}

// Send writes s as it is.
func (c *Client) Send(s string) {
	c.T.Helper()
	if _, err := io.WriteString(c.Conn, s); err != nil {
		c.T.Fatalf("send %q: %v", s, err)
	}
}

// Line reads a line, which must end in CRLF, and returns it without.
func (c *Client) Line() string {
	c.T.Helper()
	l, err := c.R.ReadString('\n')
	if err != nil {
		c.T.Fatalf("read: got %q, %v", l, err)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.T.Fatalf("line %q does not end in CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// Expect reads a line and checks that it starts with prefix.
func (c *Client) Expect(prefix string) string {
	c.T.Helper()
	l := c.Line()
	if !strings.HasPrefix(l, prefix) {
		c.T.Fatalf("got %q, want prefix %q", l, prefix)
	}
	return l
}

// ExpectClosed checks that the proxy closes the connection with nothing
// more to say.
func (c *Client) ExpectClosed() {
	c.T.Helper()
	rest, err := io.ReadAll(c.R)
	if err != nil && !errors.Is(err, net.ErrClosed) && !IsConnReset(err) {
		c.T.Fatalf("waiting for close: %v (read %q)", err, rest)
	}
	if len(rest) > 0 {
		c.T.Fatalf("got %q before close, want nothing", rest)
	}
}

// IsConnReset reports whether err is a connection reset by the peer.
func IsConnReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}
