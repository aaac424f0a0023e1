package m365sim

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// ErrUnknownMailbox: the login named a mailbox the simulator does not have.
var ErrUnknownMailbox = errors.New("m365sim: unknown mailbox")

// exchangeCaps is what Exchange Online advertises, less what imapserver
// cannot do (ID, CHILDREN). imapserver adds SASL-IR, IDLE, UNSELECT and
// the AUTH= list itself.
var exchangeCaps = imap.CapSet{
	imap.CapIMAP4rev1:   {},
	imap.CapNamespace:   {},
	imap.CapUIDPlus:     {},
	imap.CapMove:        {},
	imap.CapLiteralPlus: {},
}

// IMAP is a simulated Exchange Online IMAP service: implicit TLS on
// 127.0.0.1, XOAUTH2 only, tokens checked against an Entra. Mailboxes live
// in memory, shared by all sessions of the same mailbox.
type IMAP struct {
	e      *Entra
	cert   *Cert
	ln     net.Listener
	srv    *imapserver.Server
	served chan struct{}

	logins atomic.Int64

	mu        sync.Mutex
	closed    bool
	sessions  int
	changed   chan struct{} // closed and replaced when sessions changes
	lastErr   error
	mailboxes map[string]*imapmemserver.User // by lower-case address
	disabled  map[string]bool                // IMAP off (SetIMAPEnabled), lower case
}

// NewIMAP starts a simulated IMAP service that trusts tokens of e.
func NewIMAP(e *Entra) (*IMAP, error) {
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
	s := &IMAP{
		e:         e,
		cert:      cert,
		ln:        ln,
		served:    make(chan struct{}),
		changed:   make(chan struct{}),
		mailboxes: make(map[string]*imapmemserver.User),
	}
	s.srv = imapserver.New(&imapserver.Options{
		NewSession: s.newSession,
		Caps:       exchangeCaps,
		Logger:     log.New(log.Writer(), "m365sim imap: ", log.LstdFlags),
	})
	go func() {
		defer close(s.served)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// Addr is the host:port to dial with TLS.
func (s *IMAP) Addr() string { return s.ln.Addr().String() }

// CACertPEM is the certificate to trust (broker's upstream_ca_file).
func (s *IMAP) CACertPEM() []byte { return s.cert.CertPEM }

// AddMailbox creates a mailbox with Exchange's default folders and three
// messages in INBOX.
func (s *IMAP) AddMailbox(mailbox string) error {
	if !strings.Contains(mailbox, "@") {
		return errors.New("m365sim: mailbox must be an address: " + mailbox)
	}
	u := imapmemserver.NewUser(mailbox, randomString(32))
	if err := seed(u, mailbox); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(mailbox)
	if s.mailboxes[key] != nil {
		return errors.New("m365sim: mailbox exists: " + mailbox)
	}
	s.mailboxes[key] = u
	return nil
}

func (s *IMAP) user(mailbox string) *imapmemserver.User {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mailboxes[strings.ToLower(mailbox)]
}

// Deliver appends a message to the INBOX of mailbox, as mail arriving
// from outside would; sessions idling on INBOX are told.
func (s *IMAP) Deliver(mailbox string, msg []byte) error {
	u := s.user(mailbox)
	if u == nil {
		return ErrUnknownMailbox
	}
	_, err := u.Append("INBOX", literal(msg), &imap.AppendOptions{})
	return err
}

// Logins counts successful XOAUTH2 logins.
func (s *IMAP) Logins() int64 { return s.logins.Load() }

// Sessions is the number of open connections.
func (s *IMAP) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// WaitSessions waits until exactly n connections are open.
func (s *IMAP) WaitSessions(ctx context.Context, n int) error {
	return waitUntil(ctx, &s.mu, &s.changed, func() bool { return s.sessions == n })
}

// LastAuthError is why the latest failed login failed (the client only sees
// "AUTHENTICATE failed."), or nil.
func (s *IMAP) LastAuthError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Close closes the listener and all connections and waits for their
// sessions to end.
func (s *IMAP) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	// Set before the server closes its connections, so that a connection
	// it does not know of yet is refused in newSession.
	s.closed = true
	s.mu.Unlock()
	err := s.srv.Close()
	<-s.served
	s.WaitSessions(context.Background(), 0)
	return err
}

func (s *IMAP) newSession(conn *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, &imap.Error{Type: imap.StatusResponseTypeBye, Text: "Server shutting down."}
	}
	s.sessions++
	s.broadcastLocked()
	return &session{imap: s, conn: conn}, nil, nil
}

func (s *IMAP) sessionClosed() {
	s.mu.Lock()
	s.sessions--
	s.broadcastLocked()
	s.mu.Unlock()
}

func (s *IMAP) authFailed(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

func (s *IMAP) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}
