package m365sim

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Reasons of failed POP3 logins, as LastAuthError reports them (besides the
// token errors of ValidateToken and MayAccess, and ErrUnknownMailbox).
var (
	ErrPOPDisabled  = errors.New("m365sim: POP3 is disabled for the mailbox")
	ErrPOPBasicAuth = errors.New("m365sim: POP3 USER/PASS and AUTH PLAIN with basic authentication are disabled")
	ErrPOPCancelled = errors.New("m365sim: the client cancelled AUTH")
)

// Exchange Online's POP3 connection timeouts (Set-PopSettings
// PreAuthenticatedConnectionTimeout and AuthenticatedConnectionTimeout):
// the defaults of POP3Options.
const (
	DefaultPOP3PreAuthTimeout = 60 * time.Second
	DefaultPOP3IdleTimeout    = 30 * time.Minute
)

// POP3Options configure a simulated POP3 service. Zero values are the
// defaults.
type POP3Options struct {
	// NoErrorChallenge answers a refused XOAUTH2 token with -ERR at once.
	// By default the refusal is preceded by a "+ <base64 JSON>" error
	// challenge that the client must answer (with an empty line) first, as
	// the IMAP simulator and Dovecot do. Exchange Online's public protocol
	// logs show the -ERR at once.
	NoErrorChallenge bool
	// PreAuthTimeout closes a connection that sends nothing for this long
	// before logging in; IdleTimeout after. Defaults
	// DefaultPOP3PreAuthTimeout and DefaultPOP3IdleTimeout.
	PreAuthTimeout, IdleTimeout time.Duration
}

// POP3 is a simulated Exchange Online POP3 service
// (outlook.office365.com:995): implicit TLS on 127.0.0.1, AUTH XOAUTH2
// with tokens checked against an Entra (POP.AccessAsApp or
// POP.AccessAsUser.All), over the INBOXes of an IMAP simulator: messages
// delivered to or appended over IMAP are listed by POP3, and POP3's
// deletions, applied only at QUIT, are expunged for IMAP sessions too.
type POP3 struct {
	e      *Entra
	imap   *IMAP
	opts   POP3Options
	cert   *Cert
	ln     net.Listener
	store  *mailStore
	served chan struct{}
	wg     sync.WaitGroup // connections being served

	logins  atomic.Int64
	deleted atomic.Int64

	mu       sync.Mutex
	closed   bool
	changed  chan struct{} // closed and replaced when conns changes
	conns    map[net.Conn]struct{}
	disabled map[string]bool
	lastErr  error
}

// NewPOP3 starts a simulated POP3 service on 127.0.0.1 that trusts tokens
// of e and serves the mailboxes of m.
func NewPOP3(e *Entra, m *IMAP, opts POP3Options) (*POP3, error) {
	if e == nil || m == nil {
		return nil, errors.New("m365sim: NewPOP3 needs an Entra and an IMAP simulator")
	}
	if opts.PreAuthTimeout <= 0 {
		opts.PreAuthTimeout = DefaultPOP3PreAuthTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultPOP3IdleTimeout
	}
	cert, err := NewCert("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert.TLS},
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		return nil, err
	}
	s := &POP3{
		e:        e,
		imap:     m,
		opts:     opts,
		cert:     cert,
		ln:       ln,
		store:    newMailStore(m),
		served:   make(chan struct{}),
		changed:  make(chan struct{}),
		conns:    make(map[net.Conn]struct{}),
		disabled: make(map[string]bool),
	}
	go s.serve()
	return s, nil
}

func (s *POP3) serve() {
	defer close(s.served)
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !s.track(conn) {
			conn.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(conn)
			defer conn.Close()
			newPOP3Session(s, conn).serve()
		}()
	}
}

// Addr is the host:port to dial with TLS.
func (s *POP3) Addr() string { return s.ln.Addr().String() }

// CACertPEM is the certificate to trust.
func (s *POP3) CACertPEM() []byte { return s.cert.CertPEM }

// Close closes the listener and all connections (without QUIT: nothing
// marked for deletion is deleted) and waits for their sessions to end.
func (s *POP3) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.ln.Close()
	<-s.served
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.store.close()
	return err
}

// Logins counts successful logins.
func (s *POP3) Logins() int64 { return s.logins.Load() }

// Deleted counts the messages that QUITs removed (UPDATE state).
func (s *POP3) Deleted() int64 { return s.deleted.Load() }

// Sessions is the number of open connections.
func (s *POP3) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// WaitSessions waits until exactly n connections are open. A connection
// counts as closed once its QUIT's deletions are applied.
func (s *POP3) WaitSessions(ctx context.Context, n int) error {
	return waitUntil(ctx, &s.mu, &s.changed, func() bool { return len(s.conns) == n })
}

// LastAuthError is why the latest failed login failed (the client sees only
// Exchange's short reply), or nil.
func (s *POP3) LastAuthError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// SetPOPEnabled turns POP3 on or off for mailbox, as
// Set-CASMailbox -PopEnabled does; it is on by default. Logins to a
// mailbox with POP3 off fail like any other.
func (s *POP3) SetPOPEnabled(mailbox string, enabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if enabled {
		delete(s.disabled, strings.ToLower(mailbox))
	} else {
		s.disabled[strings.ToLower(mailbox)] = true
	}
}

// Deliver puts msg into the INBOX of mailbox (IMAP.Deliver).
func (s *POP3) Deliver(mailbox string, msg []byte) error { return s.imap.Deliver(mailbox, msg) }

// Messages returns the messages in the INBOX of mailbox, as a new POP3
// session would list them, without marking them read.
func (s *POP3) Messages(mailbox string) ([][]byte, error) {
	if s.imap.user(mailbox) == nil {
		return nil, ErrUnknownMailbox
	}
	b, err := s.store.open(mailbox)
	if err != nil {
		return nil, err
	}
	defer b.close()
	list, err := b.list()
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(list))
	for _, m := range list {
		data, err := b.body(m.uid, true)
		if err != nil {
			return nil, err
		}
		out = append(out, data)
	}
	return out, nil
}

func (s *POP3) popDisabled(mailbox string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disabled[strings.ToLower(mailbox)]
}

func (s *POP3) authFailed(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// track registers a new connection; false once Close began.
func (s *POP3) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.broadcastLocked()
	return true
}

func (s *POP3) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.broadcastLocked()
	s.mu.Unlock()
}

func (s *POP3) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}
