package proxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// smtpConn is the client connection as go-smtp reads it. It gives every
// read its own idle deadline (go-smtp's ReadTimeout would otherwise bound a
// whole DATA transfer, which upstream's pace governs), and it lets the
// server end a session between transactions: once hung up, the next read
// returns EOF and go-smtp closes the connection.
type smtpConn struct {
	net.Conn
	idle time.Duration

	hungUp atomic.Bool

	mu      sync.Mutex
	busy    bool // a transaction is open or its reply not yet written
	closing bool // end the session as soon as it is idle
}

func (c *smtpConn) Read(p []byte) (int, error) {
	// The deadline goes first: hangUp's expired deadline must win over it.
	if c.idle > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	}
	if c.hungUp.Load() {
		return 0, io.EOF
	}
	return c.Conn.Read(p)
}

// hangUp ends the session at its next read, interrupting one in progress.
func (c *smtpConn) hangUp() {
	c.hungUp.Store(true)
	c.Conn.SetReadDeadline(time.Now())
}

// setBusy marks a transaction open or ended. An ended transaction's reply
// has been written (go-smtp resets the session after writing it), so a
// closing server may now hang up.
func (c *smtpConn) setBusy(busy bool) {
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
func (c *smtpConn) closeWhenIdle() {
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
