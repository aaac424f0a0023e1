package m365sim

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// Host names the simulated submission service reports: the mailbox server
// that queues messages (greeting, queue IDs) and the front end that
// answers errors.
const (
	smtpServer    = "SIM0PR01MB0001"
	smtpHost      = smtpServer + ".namprd01.prod.outlook.com"
	smtpFrontHost = "SIM0PR01CA0001.namprd01.prod.outlook.com"
)

// Exchange Online's submission limits: the defaults of SMTPOptions.
const (
	DefaultSMTPMaxConnections  = 3
	DefaultSMTPMaxMessageBytes = 157286400
	DefaultSMTPMaxRecipients   = 500
	DefaultSMTPKeepBytes       = 1 << 20
)

// Reasons of failed SMTP logins, as LastAuthError reports them (besides
// the token errors of ValidateToken and MayAccess).
var (
	ErrSMTPAuthDisabled = errors.New("m365sim: SMTP AUTH is disabled for the mailbox")
	ErrSMTPThreadLimit  = errors.New("m365sim: too many concurrent SMTP sessions of the mailbox")
	ErrSMTPBasicAuth    = errors.New("m365sim: AUTH LOGIN with basic authentication is disabled")
)

// SMTPOptions configure a simulated submission service. Zero values are
// Exchange Online's.
type SMTPOptions struct {
	// ImplicitTLS: TLS from the first byte (port 465 style) instead of
	// STARTTLS.
	ImplicitTLS bool
	// NoSTARTTLS: a misconfigured upstream that speaks plain text only and
	// offers no STARTTLS, but still offers AUTH XOAUTH2 in the clear.
	NoSTARTTLS bool
	// ErrorChallenge: a failed XOAUTH2 login first sends a 334 JSON error
	// challenge (as Gmail and Dovecot do) instead of answering 535 at once.
	ErrorChallenge bool
	// MaxConnectionsPerMailbox bounds the authenticated sessions of one
	// mailbox open at once; one more gets 432 4.3.2 at AUTH. Default 3.
	MaxConnectionsPerMailbox int
	// MaxMessageBytes is advertised as SIZE; a bigger message gets
	// 552 5.3.4. Default 157286400.
	MaxMessageBytes int64
	// MaxRecipients per message; one more gets 452 4.5.3. Default 500.
	MaxRecipients int
	// IMAP, if set, receives accepted messages (IMAP.Deliver) for the
	// recipients that are its mailboxes.
	IMAP *IMAP
	// KeepBytes: messages up to this size are kept in Message.Data.
	// Default 1 MiB.
	KeepBytes int64
}

// Message is a message the submission service accepted.
type Message struct {
	Mailbox string // the authenticated mailbox (XOAUTH2 user), lower case
	From    string // MAIL FROM
	To      []string
	Size    int64
	SHA256  [32]byte
	Data    []byte // nil when Size > KeepBytes
	QueueID string // the queue ID the 250 reply named
}

// SMTP is a simulated Exchange Online SMTP submission service
// (smtp.office365.com:587) on 127.0.0.1: STARTTLS (or implicit TLS), AUTH
// XOAUTH2 with tokens checked against an Entra, Exchange's limits and
// replies. Accepted messages are recorded, and delivered to an IMAP
// simulator if one is configured.
type SMTP struct {
	e       *Entra
	opts    SMTPOptions
	cert    *Cert
	tls     *tls.Config
	ln      net.Listener
	srv     *smtp.Server
	served  chan struct{}
	closing chan struct{} // closed by Close

	logins atomic.Int64

	mu       sync.Mutex
	closed   bool
	changed  chan struct{} // closed and replaced on every change below
	conns    map[*smtpConn]struct{}
	messages []Message
	active   map[string]int // authenticated sessions by lower-case mailbox
	peak     map[string]int
	disabled map[string]bool
	lastErr  error
	drop     *int64    // DropNextData's afterBytes, until a DATA takes it
	hold     *dataHold // HoldNextData's, until a DATA takes it
	lastHold *dataHold
}

// dataHold is one HoldNextData.
type dataHold struct {
	release chan struct{} // closed by the release function
	held    chan struct{} // closed when a DATA waits for release
}

// NewSMTP starts a simulated submission service on 127.0.0.1 that trusts
// tokens of e.
func NewSMTP(e *Entra, opts SMTPOptions) (*SMTP, error) {
	if opts.ImplicitTLS && opts.NoSTARTTLS {
		return nil, errors.New("m365sim: SMTPOptions: ImplicitTLS and NoSTARTTLS exclude each other")
	}
	if opts.MaxConnectionsPerMailbox <= 0 {
		opts.MaxConnectionsPerMailbox = DefaultSMTPMaxConnections
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultSMTPMaxMessageBytes
	}
	if opts.MaxRecipients <= 0 {
		opts.MaxRecipients = DefaultSMTPMaxRecipients
	}
	if opts.KeepBytes <= 0 {
		opts.KeepBytes = DefaultSMTPKeepBytes
	}
	cert, err := NewCert("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &SMTP{
		e:    e,
		opts: opts,
		cert: cert,
		tls: &tls.Config{
			Certificates: []tls.Certificate{cert.TLS},
			MinVersion:   tls.VersionTLS12,
		},
		served:   make(chan struct{}),
		closing:  make(chan struct{}),
		changed:  make(chan struct{}),
		conns:    make(map[*smtpConn]struct{}),
		active:   make(map[string]int),
		peak:     make(map[string]int),
		disabled: make(map[string]bool),
	}
	s.ln = &smtpListener{Listener: ln, s: s}

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = smtpHost // the greeting is Exchange's: see smtpConn.Write
	srv.MaxMessageBytes = opts.MaxMessageBytes
	// Recipients are counted by the session, to answer as Exchange does.
	srv.MaxRecipients = 0
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.EnableBINARYMIME = true
	srv.ErrorLog = log.New(log.Writer(), "m365sim smtp: ", log.LstdFlags)
	switch {
	case opts.ImplicitTLS:
		// TLS lies below the connection go-smtp sees (smtpListener), so it
		// must neither offer STARTTLS nor hold AUTH back.
		srv.AllowInsecureAuth = true
	case opts.NoSTARTTLS:
		srv.AllowInsecureAuth = true
	default:
		srv.TLSConfig = s.tls
	}
	s.srv = srv
	go func() {
		defer close(s.served)
		srv.Serve(s.ln)
	}()
	return s, nil
}

// Addr is the host:port to dial (STARTTLS unless ImplicitTLS).
func (s *SMTP) Addr() string { return s.ln.Addr().String() }

// CACertPEM is the certificate to trust.
func (s *SMTP) CACertPEM() []byte { return s.cert.CertPEM }

// Close closes the listener and all connections (a DATA held by
// HoldNextData ends without a reply) and waits for their sessions to end.
func (s *SMTP) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	// Set before the listener closes, so that a connection accepted
	// meanwhile is closed by smtpListener instead of served.
	s.closed = true
	s.mu.Unlock()
	err := s.ln.Close()
	<-s.served // no connection is accepted any more
	s.mu.Lock()
	conns := make([]*smtpConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.abort()
	}
	close(s.closing) // a held DATA ends, with nobody left to answer
	// Shutdown, after Close of all connections, just waits for the
	// sessions' goroutines.
	s.srv.Shutdown(context.Background())
	s.WaitConnections(context.Background(), 0)
	return err
}

// Messages are the accepted messages, in order.
func (s *SMTP) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.messages)
}

// WaitMessages waits until at least n messages were accepted and returns
// them.
func (s *SMTP) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	return waitLen(ctx, &s.mu, &s.changed, &s.messages, n)
}

// Connections is the number of open TCP connections.
func (s *SMTP) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// WaitConnections waits until exactly n TCP connections are open. A
// session's authentication slot is released before its connection counts
// as closed.
func (s *SMTP) WaitConnections(ctx context.Context, n int) error {
	return waitUntil(ctx, &s.mu, &s.changed, func() bool { return len(s.conns) == n })
}

// MaxConcurrent is the most authenticated sessions of mailbox that were
// ever open at once.
func (s *SMTP) MaxConcurrent(mailbox string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak[strings.ToLower(mailbox)]
}

// Logins counts successful AUTHs.
func (s *SMTP) Logins() int64 { return s.logins.Load() }

// LastAuthError is why the latest failed AUTH failed (the client sees only
// Exchange's short reply), or nil.
func (s *SMTP) LastAuthError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// DropNextData makes the next DATA (or BDAT transfer) of any session end
// abruptly: once afterBytes message bytes were read, the TCP connection is
// closed without a reply (under TLS, without close_notify). A message
// shorter than afterBytes is read whole before the connection is closed:
// the client sent everything and never learns the outcome. Nothing is
// recorded or delivered. One-shot.
func (s *SMTP) DropNextData(afterBytes int64) {
	s.mu.Lock()
	s.drop = &afterBytes
	s.mu.Unlock()
}

// HoldNextData makes the next DATA withhold its final reply, after reading
// the whole message, until release is called. The message is recorded and
// delivered only then, just before the 250. Close ends a held DATA
// without a reply, recording nothing. One-shot; release may be called more
// than once.
func (s *SMTP) HoldNextData() (release func()) {
	h := &dataHold{release: make(chan struct{}), held: make(chan struct{})}
	s.mu.Lock()
	s.hold, s.lastHold = h, h
	s.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(h.release) }) }
}

// heldData is closed when a DATA waits for the latest HoldNextData's
// release (for tests).
func (s *SMTP) heldData() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastHold == nil {
		return nil
	}
	return s.lastHold.held
}

// DisableSMTPAuth turns off SMTP AUTH for mailbox, as
// Set-CASMailbox -SmtpClientAuthenticationDisabled $true does: logins then
// get 535 5.7.139.
func (s *SMTP) DisableSMTPAuth(mailbox string) {
	s.mu.Lock()
	s.disabled[strings.ToLower(mailbox)] = true
	s.mu.Unlock()
}

func (s *SMTP) authDisabled(mailbox string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disabled[strings.ToLower(mailbox)]
}

func (s *SMTP) authFailed(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

func (s *SMTP) takeDrop() (afterBytes int64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drop == nil {
		return 0, false
	}
	afterBytes = *s.drop
	s.drop = nil
	return afterBytes, true
}

func (s *SMTP) takeHold() *dataHold {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.hold
	s.hold = nil
	return h
}

func (s *SMTP) record(m Message) {
	s.mu.Lock()
	s.messages = append(s.messages, m)
	s.broadcastLocked()
	s.mu.Unlock()
}

// track registers a new connection; false once Close began.
func (s *SMTP) track(c *smtpConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.broadcastLocked()
	return true
}

func (s *SMTP) untrack(c *smtpConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.broadcastLocked()
	s.mu.Unlock()
}

func (s *SMTP) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// smtpListener counts connections and, with ImplicitTLS, puts TLS under
// them.
type smtpListener struct {
	net.Listener
	s *SMTP
}

func (l *smtpListener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &smtpConn{Conn: raw, raw: raw, s: l.s}
	if l.s.opts.ImplicitTLS {
		c.Conn = tls.Server(raw, l.s.tls)
	}
	if !l.s.track(c) {
		raw.Close()
		return nil, net.ErrClosed
	}
	return c, nil
}

// smtpConn is one TCP connection as go-smtp sees it (under its STARTTLS,
// or over implicit TLS). It replaces go-smtp's greeting with Exchange's.
type smtpConn struct {
	net.Conn           // raw, or TLS over raw with ImplicitTLS
	raw       net.Conn // the TCP connection
	s         *SMTP
	greeted   atomic.Bool
	closeOnce sync.Once
}

func (c *smtpConn) Write(p []byte) (int, error) {
	if c.greeted.CompareAndSwap(false, true) && bytes.HasPrefix(p, []byte("220 ")) {
		greeting := fmt.Sprintf("220 %s Microsoft ESMTP MAIL Service ready at %s\r\n",
			smtpHost, c.s.e.now().Format(time.RFC1123Z))
		if _, err := c.Conn.Write([]byte(greeting)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *smtpConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.s.untrack(c) })
	return err
}

// abort closes the TCP connection without a word, even under TLS.
func (c *smtpConn) abort() {
	c.raw.Close()
	c.closeOnce.Do(func() { c.s.untrack(c) })
}

// connOf finds the smtpConn under a go-smtp connection, which is TLS over
// it after STARTTLS.
func connOf(c *smtp.Conn) *smtpConn {
	nc := c.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, _ := nc.(*smtpConn)
	return sc
}
