package graph

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Limits of one header block: the message's, or any part's. go-message
// reads a header block whole into memory, however long; these keep an
// authenticated client from making broker allocate up to the message's
// size for one.
const (
	// maxHeaderBytes bounds a header block's bytes, folded lines and line
	// breaks included.
	maxHeaderBytes = 1 << 20
	// maxHeaderFields bounds a header block's fields.
	maxHeaderFields = 1000
)

// errHeaderTooLarge: a header block is over maxHeaderBytes or
// maxHeaderFields.
var errHeaderTooLarge = fmt.Errorf("a header block is over %d bytes or %d fields", maxHeaderBytes, maxHeaderFields)

// headerGuard passes an entity's raw bytes through to the MIME reader and
// fails the read that takes a header block past the limits, before the
// reader has buffered more than its read-ahead beyond them. It finds the
// header blocks itself: from the start, for the message (boundary nil);
// after each delimiter line of boundary, for the parts of a multipart
// (RFC 2046 §5.1.1: "--" boundary, then only white space to the end of
// the line; the close delimiter, "--" boundary "--", starts none).
type headerGuard struct {
	r        io.Reader
	boundary []byte // "--" + boundary; nil for the message's header

	inHeader  bool
	done      bool // the message's header is over: nothing more to watch
	col       int  // bytes of the current line so far (capped)
	notDelim  bool // the current line is not a delimiter line
	onlyCR    bool // the current header line is only "\r" so far
	bytes     int  // of the current header block
	fields    int
	err       error
	lineStart bool
}

// guardMessage watches the message's header.
func guardMessage(r io.Reader) *headerGuard {
	return &headerGuard{r: r, inHeader: true, lineStart: true}
}

// guardParts watches the headers of the parts of a multipart whose body
// r is.
func guardParts(r io.Reader, boundary string) *headerGuard {
	return &headerGuard{r: r, boundary: []byte("--" + boundary), lineStart: true}
}

func (g *headerGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if !g.done {
		if g.err = g.scan(p[:n]); g.err != nil {
			return 0, g.err
		}
	}
	return n, err
}

// check returns the guard's error, which is why err happened, if it
// tripped; else err.
func (g *headerGuard) check(err error) error {
	if g.err != nil && !errors.Is(err, errHeaderTooLarge) {
		return g.err
	}
	return err
}

func (g *headerGuard) scan(p []byte) error {
	for i := 0; i < len(p); i++ {
		b := p[i]
		if g.inHeader {
			g.bytes++
			if g.bytes > maxHeaderBytes {
				return fmt.Errorf("%w: over %d bytes", errHeaderTooLarge, maxHeaderBytes)
			}
			switch {
			case b == '\n':
				if g.lineStart || g.onlyCR {
					// The blank line that ends the header.
					g.inHeader, g.bytes, g.fields = false, 0, 0
					g.col, g.notDelim = 0, false
					if g.boundary == nil {
						g.done = true
						return nil
					}
				}
				g.lineStart, g.onlyCR = true, false
			case g.lineStart:
				g.lineStart = false
				g.onlyCR = b == '\r'
				if b != ' ' && b != '\t' && b != '\r' {
					g.fields++
					if g.fields > maxHeaderFields {
						return fmt.Errorf("%w: over %d fields", errHeaderTooLarge, maxHeaderFields)
					}
				}
			default:
				g.onlyCR = false
			}
			continue
		}
		// In a body (or preamble, or epilogue): look for delimiter lines.
		if b == '\n' {
			if !g.notDelim && g.col >= len(g.boundary) {
				g.inHeader, g.lineStart, g.onlyCR = true, true, false
			}
			g.col, g.notDelim = 0, false
			continue
		}
		if g.notDelim {
			// Skip to the end of the line.
			j := bytes.IndexByte(p[i:], '\n')
			if j < 0 {
				return nil
			}
			i += j - 1
			continue
		}
		switch {
		case g.col < len(g.boundary):
			g.notDelim = b != g.boundary[g.col]
		default:
			g.notDelim = b != ' ' && b != '\t' && b != '\r'
		}
		g.col++
	}
	return nil
}
