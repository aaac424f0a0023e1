package smtp

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailbroker/broker/proxy"
)

// clientConn is the client connection as go-smtp reads it. It bounds each
// command, from the first read after the previous reply until its own
// reply, so that a client trickling a byte at a time cannot extend it; each
// read of message data gets its own idle deadline instead (go-smtp's
// ReadTimeout would bound a whole DATA transfer, which upstream's pace
// governs). Before authentication every read also stops at the pre-auth
// deadline. And it lets the server end a session between transactions: once
// hung up, the next read returns EOF and go-smtp closes the connection.
//
// Commands are told apart by the replies written between them rather than
// by line ends, which STARTTLS would hide under TLS records.
//
// While it carries the client's bytes in clear (lines), no read goes past
// the end of a line: go-smtp's reader then holds nothing beyond the command
// it read, and the session may read a message's data from here itself
// (readData), handing back what followed it (unread).
type clientConn struct {
	net.Conn
	idle time.Duration
	// lines: reads stop at a line end. Cleared when go-smtp speaks TLS
	// over this connection (STARTTLS).
	lines atomic.Bool
	// pending holds bytes read from Conn and not yet returned.
	pending []byte
	// goAhead: the last reply written was DATA's 354.
	goAhead atomic.Bool
	// preAuth is the pre-auth deadline in Unix nanoseconds; 0 once the
	// client authenticated. preAuthExpired (if set) is called when a read
	// fails at it.
	preAuth        atomic.Int64
	preAuthExpired func()
	// inData: message data is being read.
	inData atomic.Bool
	// replied: a reply went out since the command deadline was set.
	replied atomic.Bool
	// cmdDeadline ends the current command; only Read touches it, from
	// go-smtp's connection goroutine.
	cmdDeadline time.Time
	// timedOut: a read failed at a deadline. Every later read fails the
	// same way: go-smtp's line reader hands on the part of a line read
	// before the error as if it were whole, and the session refuses to act
	// on it (see expired).
	timedOut atomic.Bool
	timeout  error
	// readErr fails every read: the session found the client's input
	// unreadable (a line too long in DATA).
	readErr error

	hungUp atomic.Bool

	mu      sync.Mutex
	busy    bool // a transaction is open or its reply not yet written
	closing bool // end the session as soon as it is idle
}

func (c *clientConn) Read(p []byte) (int, error) { return c.read(p, c.lines.Load()) }

// readData reads message data for the session, as much as has come.
func (c *clientConn) readData(p []byte) (int, error) { return c.read(p, false) }

// unread hands p back to be read again before anything else.
func (c *clientConn) unread(p []byte) {
	c.pending = append(append([]byte(nil), p...), c.pending...)
}

func (c *clientConn) read(p []byte, lines bool) (int, error) {
	if len(c.pending) > 0 && c.timeout == nil && c.readErr == nil && !c.hungUp.Load() {
		q := c.pending
		if lines {
			q = untilLineEnd(q)
		}
		n := copy(p, q)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	// The deadline goes first: hangUp's expired deadline must win over it.
	var preAuth time.Time
	if pa := c.preAuth.Load(); pa != 0 {
		preAuth = time.Unix(0, pa)
	}
	if c.idle > 0 || !preAuth.IsZero() {
		now := time.Now()
		var d time.Time
		if c.idle > 0 {
			switch {
			case c.inData.Load():
				d = now.Add(c.idle)
			case c.replied.Swap(false) || c.cmdDeadline.IsZero():
				c.cmdDeadline = now.Add(c.idle)
				d = c.cmdDeadline
			default:
				d = c.cmdDeadline
			}
		}
		if !preAuth.IsZero() && (d.IsZero() || preAuth.Before(d)) {
			d = preAuth
		}
		c.Conn.SetReadDeadline(d)
	}
	if c.hungUp.Load() {
		return 0, io.EOF
	}
	if c.timeout != nil {
		return 0, c.timeout
	}
	if c.readErr != nil {
		return 0, c.readErr
	}
	n, err := c.Conn.Read(p)
	if lines && err == nil {
		if q := untilLineEnd(p[:n]); len(q) < n {
			c.pending = append(c.pending, p[len(q):n]...)
			n = len(q)
		}
	}
	if err != nil && proxy.IsTimeout(err) && !c.hungUp.Load() {
		c.timeout = err
		c.timedOut.Store(true)
		if !preAuth.IsZero() && c.preAuthExpired != nil && !time.Now().Before(preAuth) {
			c.preAuthExpired()
		}
	}
	return n, err
}

// untilLineEnd returns p up to its first LF, or all of it.
func untilLineEnd(p []byte) []byte {
	if i := bytes.IndexByte(p, '\n'); i >= 0 {
		return p[:i+1]
	}
	return p
}

// expired reports whether the client ran out of time: the command at hand
// may be cut short and must not be acted on.
func (c *clientConn) expired() bool { return c.timedOut.Load() }

func (c *clientConn) Write(p []byte) (int, error) {
	c.replied.Store(true)
	c.goAhead.Store(bytes.HasPrefix(p, []byte("354 ")))
	return c.Conn.Write(p)
}

// endPreAuth lifts the pre-auth deadline: the client authenticated.
func (c *clientConn) endPreAuth() { c.preAuth.Store(0) }

// hangUp ends the session at its next read, interrupting one in progress.
func (c *clientConn) hangUp() {
	c.hungUp.Store(true)
	c.Conn.SetReadDeadline(time.Now())
}

// setBusy marks a transaction open or ended. An ended transaction's reply
// has been written (go-smtp resets the session after writing it), so a
// closing server may now hang up.
func (c *clientConn) setBusy(busy bool) {
	c.mu.Lock()
	c.busy = busy
	closing := c.closing
	c.mu.Unlock()
	if !busy && closing {
		c.hangUp()
	}
}

// closeWhenIdle hangs up now if no transaction is open, or once the open
// one ends.
func (c *clientConn) closeWhenIdle() {
	c.mu.Lock()
	c.closing = true
	busy := c.busy
	c.mu.Unlock()
	if !busy {
		c.hangUp()
	}
}

// oneConnListener hands a single connection to go-smtp's Server.Serve,
// which has no way to serve a connection accepted elsewhere. The second
// Accept fails, so Serve returns at once while the session goes on.
type oneConnListener struct {
	conn net.Conn
	once sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.conn })
	if c == nil {
		return nil, net.ErrClosed
	}
	return c, nil
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
