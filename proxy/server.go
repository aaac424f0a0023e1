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

// connServer is the protocol-independent part of a server: the accept loop,
// the set of live connections and their teardown.
type connServer struct {
	logger *slog.Logger
	handle func(*trackedConn)
	// limiter caps connections, possibly together with other servers';
	// refusal is the protocol's one line to a connection refused.
	limiter *ConnLimiter
	refusal string
	stats   serverStats
	// refusing counts refusals being written.
	refusing atomic.Int32

	// ctx is cancelled by Close and when Shutdown gives up waiting: it
	// aborts logins in progress.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*trackedConn]struct{}
	drained   chan struct{} // closed when conns empties after closed is set
}

// newConnServer returns a server that runs handle for each connection that
// limiter (nil: one of its own with the default caps) admits, and answers
// the others with the line refusal.
func newConnServer(logger *slog.Logger, handle func(*trackedConn), limiter *ConnLimiter, refusal string) *connServer {
	ctx, cancel := context.WithCancel(context.Background())
	if limiter == nil {
		limiter = NewConnLimiter(0, 0)
	}
	return &connServer{
		logger:    logger,
		handle:    handle,
		limiter:   limiter,
		refusal:   refusal,
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*trackedConn]struct{}),
		drained:   make(chan struct{}),
	}
}

// serve accepts connections on l until it fails or the server closes. It
// never waits for a session: each runs in its own goroutine.
func (s *connServer) serve(l net.Listener) error {
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
func (s *connServer) refuse(c net.Conn, reason string) {
	s.logger.Warn("connection refused", "reason", reason, "remote", c.RemoteAddr().String())
	s.stats.refused(reason)
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

// refusedMailbox logs and counts a login refused at its mailbox's cap.
func (s *connServer) refusedMailbox(tc *trackedConn, account string) {
	s.logger.Warn("connection refused", "reason", refusedPerMailbox, "remote", tc.conn.RemoteAddr().String(),
		"session", tc.id, "account", account)
	s.stats.refused(refusedPerMailbox)
}

func (s *connServer) run(tc *trackedConn) {
	defer s.untrack(tc)
	defer tc.Close()
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("session panic", "session", tc.id, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	s.handle(tc)
}

func (s *connServer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *connServer) track(c net.Conn) *trackedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	tc := &trackedConn{id: newSessionID(), conn: c, start: time.Now()}
	s.conns[tc] = struct{}{}
	return tc
}

func (s *connServer) untrack(tc *trackedConn) {
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
func (s *connServer) closeDrained() {
	select {
	case <-s.drained:
	default:
		close(s.drained)
	}
}

// stop stops accepting. s.mu is held.
func (s *connServer) stopLocked() error {
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

// close stops accepting and closes every connection now.
func (s *connServer) close() error {
	s.mu.Lock()
	err := s.stopLocked()
	conns := make([]*trackedConn, 0, len(s.conns))
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

// shutdown stops accepting, calls stopped (if not nil) and waits for the
// sessions to end until ctx is done; then it closes those left.
func (s *connServer) shutdown(ctx context.Context, stopped func()) error {
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
		s.close()
		return ctx.Err()
	}
}

func (s *connServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// trackedConn is one accepted connection and whatever else its session opens
// (the upstream connection), so that all of it can be closed at once.
type trackedConn struct {
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

// attach adds c to what Close closes. If the connection is already closed it
// closes c and returns false.
func (tc *trackedConn) attach(c io.Closer) bool {
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

// Close closes the connection and everything attached to it. It closes the
// raw connections under TLS: a close_notify could block on a peer that does
// not read, and Close must be immediate.
func (tc *trackedConn) Close() { tc.closeBy(false) }

func (tc *trackedConn) closeBy(server bool) {
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

// closedByServer reports whether Close or Shutdown of the server ended the
// connection.
func (tc *trackedConn) closedByServer() bool {
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

const (
	// lingerTimeout and lingerMaxBytes bound how long and how much a
	// closing session discards of what the client still sends.
	lingerTimeout  = 2 * time.Second
	lingerMaxBytes = 4 << 20
)

// closeAfterBye half-closes c and discards what the client is still
// sending for a moment: closing a socket with unread bytes makes the kernel
// answer with a reset, which can destroy the BYE still in flight.
func closeAfterBye(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, c, lingerMaxBytes)
}

// setDefault sets an option left at zero (or below) to its default.
func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// upstreamTLSConfig copies an upstream TLS client configuration (nil: the
// defaults), naming upstream's host as ServerName unless set, with TLS 1.2
// at least.
func upstreamTLSConfig(c *tls.Config, upstream string) *tls.Config {
	conf := &tls.Config{}
	if c != nil {
		conf = c.Clone()
	}
	if conf.ServerName == "" {
		if host, _, err := net.SplitHostPort(upstream); err == nil {
			conf.ServerName = host
		}
	}
	conf.MinVersion = max(conf.MinVersion, tls.VersionTLS12)
	return conf
}

// localTLSConfig copies the local certificate's configuration, with TLS
// 1.2 at least; nil stays nil (no STARTTLS).
func localTLSConfig(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	conf := c.Clone()
	conf.MinVersion = max(conf.MinVersion, tls.VersionTLS12)
	return conf
}
