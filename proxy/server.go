package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

const (
	// acceptBackoffMin and acceptBackoffMax bound the pause after a
	// temporary Accept error (EMFILE, ECONNABORTED), as net/http does.
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// ServerOptions configures a Server. A protocol server fills them in; the
// zero values are documented.
type ServerOptions struct {
	// Logger receives the refusals at a cap and recovered panics; the
	// protocol server passes its own, with a "proto" attribute. Required.
	Logger *slog.Logger
	// Handle runs one session. It is called in the connection's own
	// goroutine; when it returns, the connection and everything attached
	// to it are closed. Required.
	Handle func(*Conn)
	// Limiter caps connections, possibly together with other servers'.
	// Nil: a limiter of this server's own with the default caps.
	Limiter *ConnLimiter
	// Refusal is the protocol's one line (without CRLF) to a connection
	// refused at a cap of Limiter, e.g. "* BYE Too many connections".
	Refusal string
	// MaxConnectionsPerMailbox caps the upstream connections each account
	// may hold through TakeSlot. It must be positive: each protocol has
	// its own default.
	MaxConnectionsPerMailbox int
	// ConnectionWait bounds TakeSlot's wait for a free upstream connection
	// of a mailbox.
	ConnectionWait time.Duration
	// Slots are the per-mailbox slots TakeSlot takes, shared with another
	// server (the one a reload replaces), with their own cap:
	// MaxConnectionsPerMailbox is then ignored. Nil: the server's own.
	Slots *Slots
	// Protocol names the server's protocol to Observer.
	Protocol Protocol
	// Observer is told of sessions, refusals and slot waits. Nil: none.
	Observer Observer
}

// Server is the protocol-independent part of a protocol server: the accept
// loop, the connection caps, the set of live connections, their teardown
// (Close, Shutdown), the per-mailbox upstream slots and the counters. Each
// accepted connection runs ServerOptions.Handle in its own goroutine, which
// recovers its panics.
type Server struct {
	logger *slog.Logger
	handle func(*Conn)
	// limiter caps connections, possibly together with other servers';
	// refusal is the protocol's one line to a connection refused.
	limiter *ConnLimiter
	refusal string
	slots   *mailboxSlots
	wait    time.Duration
	stats   serverStats
	proto   Protocol
	obs     Observer
	// refusing counts refusals being written.
	refusing atomic.Int32

	// ctx is cancelled by Close and when Shutdown gives up waiting: it
	// aborts logins in progress.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*Conn]struct{}
	drained   chan struct{} // closed when conns empties after closed is set
}

// NewServer returns a server configured by opts.
func NewServer(opts *ServerOptions) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	limiter := opts.Limiter
	if limiter == nil {
		limiter = NewConnLimiter(0, 0)
	}
	return &Server{
		logger:    opts.Logger,
		handle:    opts.Handle,
		limiter:   limiter,
		refusal:   opts.Refusal,
		slots:     slotsOf(opts),
		wait:      opts.ConnectionWait,
		proto:     opts.Protocol,
		obs:       ObserverOr(opts.Observer),
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*Conn]struct{}),
		drained:   make(chan struct{}),
	}
}

// Observer returns ServerOptions.Observer, or NopObserver: the protocol
// server tells it of its own events.
func (s *Server) Observer() Observer { return s.obs }

func slotsOf(opts *ServerOptions) *mailboxSlots {
	if opts.Slots != nil {
		return opts.Slots.s
	}
	return newMailboxSlots(opts.MaxConnectionsPerMailbox)
}

// Context is cancelled by Close, and by Shutdown when it gives up waiting:
// logins and handshakes derive their contexts from it.
func (s *Server) Context() context.Context { return s.ctx }

// Serve accepts connections on l until it fails or the server closes, then
// returns ErrServerClosed or l's error. It never waits for a session: each
// runs in its own goroutine.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
				s.logger.Warn("accept failed, retrying", "err", err, "delay", delay)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-s.ctx.Done():
					t.Stop()
				}
				continue
			}
			return err
		}
		delay = 0
		release, refused := s.limiter.acquire(c.RemoteAddr())
		if refused != "" {
			s.refuse(c, refused)
			continue
		}
		tc := s.track(c)
		if tc == nil {
			release()
			c.Close()
			return ErrServerClosed
		}
		tc.release = release
		go s.run(tc)
	}
}

// refuse logs and counts a connection refused at a cap, and answers it with
// the protocol's refusal line unless too many refusals are being written.
func (s *Server) refuse(c net.Conn, reason string) {
	s.logger.Warn("connection refused", "reason", reason, "remote", c.RemoteAddr().String())
	s.stats.refused(reason)
	s.obs.ConnRefused(s.proto, reason)
	if s.refusing.Add(1) > maxRefusalsInFlight {
		s.refusing.Add(-1)
		rawConn(c).Close()
		return
	}
	go func() {
		defer s.refusing.Add(-1)
		defer rawConn(c).Close()
		c.SetDeadline(time.Now().Add(refusalWriteTimeout))
		io.WriteString(c, s.refusal+"\r\n")
	}()
}

// TakeSlot waits for a free upstream connection of account, for at most
// ServerOptions.ConnectionWait or until ctx is done. A wait that runs out is
// logged and counted as a refusal (Stats.RefusedPerMailbox), and its error
// is ErrSlotWait. The release function frees the slot; it may be called
// more than once.
func (s *Server) TakeSlot(ctx context.Context, c *Conn, account string) (release func(), err error) {
	return s.TakeSlotSince(ctx, c, account, time.Now())
}

// TakeSlotSince is TakeSlot for a wait that began at since and that this
// call resumes: it ends ConnectionWait after since, however often resumed.
func (s *Server) TakeSlotSince(ctx context.Context, c *Conn, account string, since time.Time) (release func(), err error) {
	start := time.Now()
	release, err = s.slots.acquireWithin(ctx, account, s.wait-start.Sub(since))
	s.obs.SlotWait(s.proto, time.Since(start))
	if errors.Is(err, ErrSlotWait) {
		s.logger.Warn("connection refused", "reason", refusedPerMailbox, "remote", c.conn.RemoteAddr().String(),
			"session", c.id, "account", account)
		s.stats.refused(refusedPerMailbox)
		s.obs.ConnRefused(s.proto, refusedPerMailbox)
	}
	return release, err
}

// UpstreamConnections returns how many slots of account are taken.
func (s *Server) UpstreamConnections(account string) int { return s.slots.inUse(account) }

// CountPreAuthTimeout counts a session closed at the pre-login time limit
// (Stats.PreAuthTimeouts).
func (s *Server) CountPreAuthTimeout() { s.stats.preAuthTimeouts.Add(1) }

func (s *Server) run(tc *Conn) {
	s.obs.SessionStarted(s.proto)
	defer func() { s.obs.SessionEnded(s.proto, time.Since(tc.start)) }()
	defer s.untrack(tc)
	defer tc.Close()
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("session panic", "session", tc.id, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	s.handle(tc)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) track(c net.Conn) *Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	tc := NewConn(c)
	s.conns[tc] = struct{}{}
	return tc
}

func (s *Server) untrack(tc *Conn) {
	if tc.release != nil {
		tc.release()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, tc)
	if s.closed && len(s.conns) == 0 {
		s.closeDrained()
	}
}

// closeDrained closes s.drained once; s.mu is held.
func (s *Server) closeDrained() {
	select {
	case <-s.drained:
	default:
		close(s.drained)
	}
}

// stop stops accepting. s.mu is held.
func (s *Server) stopLocked() error {
	var err error
	s.closed = true
	for l := range s.listeners {
		if cerr := l.Close(); cerr != nil && err == nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
	}
	if len(s.conns) == 0 {
		s.closeDrained()
	}
	return err
}

// Close stops accepting and closes every connection now.
func (s *Server) Close() error {
	s.mu.Lock()
	err := s.stopLocked()
	conns := make([]*Conn, 0, len(s.conns))
	for tc := range s.conns {
		conns = append(conns, tc)
	}
	s.mu.Unlock()
	s.cancel()
	for _, tc := range conns {
		tc.closeBy(true)
	}
	return err
}

// Shutdown stops accepting, calls stopped (if not nil) and waits for the
// sessions to end until ctx is done; then it closes those left and returns
// ctx's error. stopped lets a protocol end its idle sessions.
func (s *Server) Shutdown(ctx context.Context, stopped func()) error {
	s.mu.Lock()
	err := s.stopLocked()
	s.mu.Unlock()
	if stopped != nil {
		stopped()
	}
	select {
	case <-s.drained:
		s.cancel()
		return err
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Sessions returns the number of live sessions, logged in or not.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats { return s.stats.snapshot(s.Sessions()) }

// Conn is one accepted connection and whatever else its session opens (the
// upstream connection), so that all of it can be closed at once.
type Conn struct {
	id    string
	conn  net.Conn
	start time.Time
	// release uncounts the connection at its limiter; nil if not counted.
	release func()

	mu       sync.Mutex
	closed   bool
	byServer bool
	others   []io.Closer
}

// NewConn returns c as a Conn of no server, with a new session id, for
// running a session handler without a Server (tests and fuzzing).
func NewConn(c net.Conn) *Conn {
	return &Conn{id: newSessionID(), conn: c, start: time.Now()}
}

// ID returns a short random id that ties the session's log lines together.
func (tc *Conn) ID() string { return tc.id }

// NetConn returns the client connection as accepted.
func (tc *Conn) NetConn() net.Conn { return tc.conn }

// Accepted returns when the connection was accepted: the pre-login time
// limit counts from then.
func (tc *Conn) Accepted() time.Time { return tc.start }

// Attach adds c to what Close closes. If the connection is already closed it
// closes c and returns false.
func (tc *Conn) Attach(c io.Closer) bool {
	tc.mu.Lock()
	if !tc.closed {
		tc.others = append(tc.others, c)
		tc.mu.Unlock()
		return true
	}
	tc.mu.Unlock()
	c.Close()
	return false
}

// Detach removes c from what Close closes, so that c may outlive the
// connection: an upstream connection kept for another session. It returns
// false if the connection is closed already (c with it) or c is not
// attached.
func (tc *Conn) Detach(c io.Closer) bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.closed {
		return false
	}
	for i, o := range tc.others {
		if o == c {
			tc.others = slices.Delete(tc.others, i, i+1)
			return true
		}
	}
	return false
}

// Close closes the connection and everything attached to it. It closes the
// raw connections under TLS: a close_notify could block on a peer that does
// not read, and Close must be immediate.
func (tc *Conn) Close() { tc.closeBy(false) }

func (tc *Conn) closeBy(server bool) {
	tc.mu.Lock()
	if tc.closed {
		tc.mu.Unlock()
		return
	}
	tc.closed, tc.byServer = true, server
	others := tc.others
	tc.others = nil
	tc.mu.Unlock()
	rawConn(tc.conn).Close()
	for _, c := range others {
		if nc, ok := c.(net.Conn); ok {
			c = rawConn(nc)
		}
		c.Close()
	}
}

// ClosedByServer reports whether Close or Shutdown of the server ended the
// connection.
func (tc *Conn) ClosedByServer() bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.byServer
}

func rawConn(c net.Conn) net.Conn {
	if t, ok := c.(*tls.Conn); ok {
		return t.NetConn()
	}
	return c
}

// newSessionID returns a short random id that ties a session's log lines
// together.
func newSessionID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// IsTimeout reports whether err is a deadline or timeout.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
