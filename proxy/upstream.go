package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"time"
)

// DialTLS connects to addr with implicit TLS (RFC 8314), the TCP and TLS
// handshakes bounded by timeout as well as by ctx.
func DialTLS(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := &tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// Greeted is an upstream connection over TLS that has read upstream's
// greeting and asked for its capabilities, not logged in: what a
// protocol's dial returns and a WarmPool parks.
type Greeted struct {
	Conn *tls.Conn
	// Reader reads Conn; it may hold what upstream sent after the
	// capabilities.
	Reader *bufio.Reader
	// Caps are upstream's capabilities before login (IMAP CAPABILITY,
	// POP3 CAPA), nil if it told none.
	Caps []string
}

// Close closes the connection at once, without a close_notify that a
// peer not reading could block.
func (g *Greeted) Close() { g.Conn.NetConn().Close() }

// defaultGreetBuffer is DialGreeted's reader size when none is given.
const defaultGreetBuffer = 4 << 10

// DialGreeted connects to addr with implicit TLS (DialTLS, bounded by
// timeout) and has greet read the greeting and the capabilities through a
// reader of bufSize bytes (0: 4 KiB), under ctx's deadline, which it
// leaves on the connection. Cancelling ctx interrupts greet.
func DialGreeted(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration, bufSize int, greet func(*Greeted) error) (*Greeted, error) {
	c, err := DialTLS(ctx, addr, cfg, timeout)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if bufSize <= 0 {
		bufSize = defaultGreetBuffer
	}
	g := &Greeted{Conn: c, Reader: bufio.NewReaderSize(c, bufSize)}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(longAgo) })
	err = greet(g)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// longAgo is a deadline in the past: it interrupts a read or write.
var longAgo = time.Unix(1, 0)

// ReadUpstreamLine reads one line of an upstream's reply from br, without
// its LF or CRLF. A line longer than max fails ("upstream line too long"),
// and an end of input before the line end is io.ErrUnexpectedEOF; br's
// connection carries the deadline.
func ReadUpstreamLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		b, err := br.ReadSlice('\n')
		line = append(line, b...)
		if len(line) > max {
			return nil, errors.New("upstream line too long")
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}
