package pop3

import (
	"bytes"
)

// tracker follows a logged-in POP3 session's two streams just enough to
// know when closing the connection cuts nothing (proxy.Tracker): which of
// the client's commands still wait for their response, and where
// upstream's responses end. A response is one +OK or -ERR line, or, for a
// command answered with a multi-line response, a +OK line, the
// dot-stuffed lines and a line of a single dot. It keeps a few dozen
// bytes per direction, whatever the size of a line or a message.
type tracker struct {
	up   lineStream // client → upstream: commands
	down lineStream // upstream → client: responses

	// inflight are the commands sent and not yet answered, oldest first:
	// true for one whose +OK starts a multi-line response.
	inflight []bool
	// body: upstream is inside a multi-line response.
	body bool
	// opaque: the streams can no longer be followed (a SASL exchange
	// after login, too many commands in flight): never quiet.
	opaque bool
}

// maxInflight bounds the commands tracked; a client pipelining more makes
// the session opaque (drained only at the deadline).
const maxInflight = 256

// Client sees the client's bytes.
func (t *tracker) Client(p []byte) { t.up.feed(p, t.command) }

// Upstream sees upstream's bytes.
func (t *tracker) Upstream(p []byte) { t.down.feed(p, t.response) }

// Quiet: every command the client sent is answered in full, upstream is
// between responses and the client between commands.
func (t *tracker) Quiet() bool {
	return !t.opaque && !t.body && len(t.inflight) == 0 && t.up.atBoundary() && t.down.atBoundary()
}

// command is a complete client command line; head is its first bytes.
func (t *tracker) command(head []byte) {
	if len(t.inflight) >= maxInflight {
		t.opaque = true
		return
	}
	t.inflight = append(t.inflight, multiLine(head))
}

// multiLine reports whether the command line's +OK is followed by a
// multi-line response: RETR and TOP; LIST, UIDL and LANG without an
// argument (RFC 1939, RFC 6856); CAPA (RFC 2449); AUTH without a
// mechanism (RFC 5034).
func multiLine(line []byte) bool {
	line = bytes.TrimRight(line, "\r\n")
	name, rest, _ := bytes.Cut(line, []byte(" "))
	noArg := len(bytes.TrimSpace(rest)) == 0
	switch string(bytes.ToUpper(name)) {
	case "RETR", "TOP", "CAPA":
		return true
	case "LIST", "UIDL", "LANG", "AUTH":
		return noArg
	}
	return false
}

// response is a complete upstream line; head is its first bytes.
func (t *tracker) response(head []byte) {
	if t.body {
		if l := bytes.TrimRight(head, "\r\n"); len(l) == 1 && l[0] == '.' && len(head) <= 3 {
			t.body = false
			t.inflight = t.inflight[1:]
		}
		return
	}
	if len(t.inflight) == 0 {
		return // unsolicited (an -ERR before upstream closes): answers nothing
	}
	switch {
	case hasPrefixFold(head, "+OK"):
		if t.inflight[0] {
			t.body = true
			return
		}
	case hasPrefixFold(head, "-ERR"):
	default:
		// A SASL challenge ("+ ..."): the client's next line is no
		// command, and the exchange is not followed.
		t.opaque = true
		return
	}
	t.inflight = t.inflight[1:]
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && bytes.EqualFold(b[:len(prefix)], []byte(prefix))
}

// headBytes of a line are kept: enough for a command and its arguments,
// or a status.
const headBytes = 64

// lineStream is where one direction is: in a line or between lines.
type lineStream struct {
	head [headBytes]byte
	nh   int
	// inLine: bytes of the current line were seen (more than the head
	// may hold).
	inLine bool
	// long: the current line is longer than the head.
	long bool
}

func (s *lineStream) atBoundary() bool { return !s.inLine }

// feed consumes p, calling line with the head of each complete line, its
// CRLF included when the line fits.
func (s *lineStream) feed(p []byte, line func(head []byte)) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		seg := p
		if i >= 0 {
			seg = p[:i+1]
		}
		p = p[len(seg):]
		s.inLine = true
		n := copy(s.head[s.nh:], seg)
		s.nh += n
		if n < len(seg) {
			s.long = true
		}
		if i < 0 {
			return
		}
		h := s.head[:s.nh]
		if s.long {
			// A long line is never the terminating dot: strip nothing
			// and mark it so with a length over 3.
			h = s.head[:]
		}
		line(h)
		s.nh, s.inLine, s.long = 0, false, false
	}
}
