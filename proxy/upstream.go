package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
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
