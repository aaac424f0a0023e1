package smtp

import (
	"bytes"
	"io"
)

// A message's data on the wire (RFC 5321 §4.5.2) has CRLF line ends and
// dot-stuffing: a line that starts with a dot gets one more, and a line
// holding only a dot ends the data. go-smtp's reader undoes the stuffing
// and its client redoes it, a byte at a time each way; the relay instead
// passes the client's bytes upstream as they came, fixing only what would
// change their meaning there (wireScanner), or stuffs a whole buffer at a
// time (stuffer) where go-smtp has already read the message.

// wireWriter is a MessageWriter that also takes the message as it goes
// over the wire: CRLF line ends, dot-stuffed, without the final "." line.
// Close ends the data; a CRLF at the end of what was written is the one
// the final dot follows.
type wireWriter interface {
	MessageWriter
	WriteWire(p []byte) (int, error)
}

var (
	crlf      = []byte("\r\n")
	stuffDot  = []byte(".")
	endOfData = []byte(".\r\n")
)

// wireScanner reads the data of DATA as the client sent it and writes it
// to out in its form on the wire upstream, where it means the same as
// go-smtp's reader would have made of it:
//
//   - The data ends at a line of a single dot after a CRLF (or at the
//     start); a bare LF never ends it (RFC 5321 §4.1.1.4).
//   - A bare LF becomes CRLF, so a line after one starts a line upstream:
//     a dot there is the message's own and is stuffed.
//   - A stuffing dot before a bare LF, ".\n", would end the data once the
//     LF is CRLF: it goes, leaving the empty line it stood for.
//   - Everything else, bare CRs and the client's own stuffing included,
//     passes as it is.
//
// feed is called with the bytes read so far that it has not consumed.
type wireScanner struct {
	out io.Writer // nil once writing failed: the rest is read and dropped
	// limit bounds size (0: none); maxLine bounds the octets of a line.
	limit   int64
	maxLine int

	// size counts the message's octets as upstream stores them: stuffing
	// dots aside, with CRLF line ends.
	size int64
	line int  // octets of the current line so far
	bol  bool // at the beginning of a line
	// crlfBefore: the line before ended with CRLF, or there was none.
	crlfBefore bool

	werr     error // out's error
	tooLarge bool  // size passed limit; nothing more is written
	tooLong  bool  // a line passed maxLine; scanning stopped
}

func newWireScanner(out io.Writer, limit int64, maxLine int) *wireScanner {
	return &wireScanner{out: out, limit: limit, maxLine: maxLine, bol: true, crlfBefore: true}
}

// feed scans p and returns how much of it it consumed, and whether that
// ended with the final dot line. It leaves at most two octets that it
// cannot judge without the next: a dot (and CR) starting a line, or a CR
// ending p. It stops at a line longer than maxLine.
func (s *wireScanner) feed(p []byte) (n int, done bool) {
	run := 0 // start of the octets consumed but not yet written
	i := 0
	for i < len(p) && !s.tooLong {
		if s.bol && p[i] == '.' {
			rest := p[i:]
			switch {
			case s.crlfBefore && bytes.HasPrefix(rest, endOfData):
				s.write(p[run:i])
				return i + len(endOfData), true
			case s.crlfBefore && len(rest) >= 2 && rest[1] == '\n':
				s.write(p[run:i])
				s.write(crlf)
				s.grow(2)
				i += 2
				run = i
				s.crlfBefore = false
				continue
			case s.crlfBefore && (len(rest) == 1 || len(rest) == 2 && rest[1] == '\r'):
				s.write(p[run:i])
				return i, false
			case s.crlfBefore:
				s.size-- // the client's stuffing dot
			default:
				s.write(p[run:i])
				s.write(stuffDot)
				run = i
			}
		}
		s.bol = false
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			end := len(p)
			if p[end-1] == '\r' {
				end--
			}
			s.count(end - i)
			i = end
			break
		}
		s.count(j)
		if s.tooLong {
			break
		}
		if j > 0 && p[i+j-1] == '\r' {
			s.grow(1) // the LF; count had the CR
			s.crlfBefore = true
			i += j + 1
		} else {
			s.write(p[run : i+j])
			s.write(crlf)
			s.grow(2)
			s.crlfBefore = false
			i += j + 1
			run = i
		}
		s.bol, s.line = true, 0
	}
	s.write(p[run:i])
	return i, false
}

// scanData reads message data with read into buf, which it uses whole,
// and feeds it to sc until the final dot, a line too long or a failed
// read. It returns what was read after the final dot.
func scanData(sc *wireScanner, buf []byte, read func([]byte) (int, error)) (rest []byte, err error) {
	var start, end int
	for {
		k, done := sc.feed(buf[start:end])
		start += k
		switch {
		case done:
			return buf[start:end], nil
		case sc.tooLong:
			return nil, nil
		case err != nil:
			return nil, err
		}
		end = copy(buf, buf[start:end])
		start = 0
		var n int
		n, err = read(buf[end:])
		end += n
	}
}

// count adds n octets of a line.
func (s *wireScanner) count(n int) {
	s.line += n
	if s.line > s.maxLine {
		s.tooLong = true
	}
	s.grow(n)
}

func (s *wireScanner) grow(n int) {
	s.size += int64(n)
	if s.limit > 0 && s.size > s.limit {
		s.tooLarge = true
	}
}

func (s *wireScanner) write(p []byte) {
	if len(p) == 0 || s.out == nil || s.tooLarge || s.tooLong {
		return
	}
	if _, err := s.out.Write(p); err != nil {
		s.werr, s.out = err, nil
	}
}

// stuffer writes message data without dot-stuffing, as go-smtp's reader
// and BDAT give it, to w in its form on the wire: a bare LF becomes CRLF
// and a dot starting a line is doubled, as go-smtp's client does.
type stuffer struct {
	w   io.Writer
	mid bool // not at the beginning of a line
	cr  bool // the last octet written was a CR
}

func (s *stuffer) Write(p []byte) (int, error) {
	run := 0
	for i := 0; i < len(p); {
		if !s.mid && p[i] == '.' {
			if err := s.put(p[run:i], stuffDot); err != nil {
				return 0, err
			}
			run = i
		}
		s.mid = true
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			s.cr = p[len(p)-1] == '\r'
			break
		}
		k := i + j
		if !(k > i && p[k-1] == '\r' || k == i && s.cr) {
			if err := s.put(p[run:k], crlf); err != nil {
				return 0, err
			}
			run = k + 1
		}
		i, s.mid, s.cr = k+1, false, false
	}
	if err := s.put(p[run:], nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *stuffer) put(a, b []byte) error {
	for _, p := range [][]byte{a, b} {
		if len(p) > 0 {
			if _, err := s.w.Write(p); err != nil {
				return err
			}
		}
	}
	return nil
}
