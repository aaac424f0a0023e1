package imap

import (
	"bytes"
	"strconv"
)

// tracker follows a logged-in IMAP session's two streams just enough to
// know when a server's BYE cuts nothing (proxy.Tracker): where upstream's
// responses and their literals end, and which client commands still wait
// for their tagged response. It keeps a few dozen bytes per direction,
// whatever the size of a line or literal.
type tracker struct {
	up   stream // client → upstream: commands
	down stream // upstream → client: responses

	// inflight are the tags and names of the commands sent and not yet
	// answered, oldest first.
	inflight []pending
	// idling: the newest command in flight is IDLE and DONE is not sent.
	idling bool
	// opaque: the streams can no longer be followed (COMPRESS took
	// effect, too many commands in flight): never quiet.
	opaque bool
}

type pending struct{ tag, name string }

// maxInflight bounds the commands tracked; a client pipelining more makes
// the session opaque (drained only at the deadline).
const maxInflight = 256

// Client sees the client's bytes.
func (t *tracker) Client(p []byte) { t.up.feed(p, t.command) }

// Upstream sees upstream's bytes.
func (t *tracker) Upstream(p []byte) { t.down.feed(p, t.response) }

// Quiet: upstream is between responses, the client is between commands,
// and no command waits for its answer, except an IDLE, which a BYE may end
// (RFC 3501 §7.1.5: the server may close the connection at any time; a
// client in IDLE expects untagged data and handles BYE).
func (t *tracker) Quiet() bool {
	if t.opaque || !t.down.atBoundary() || !t.up.atBoundary() {
		return false
	}
	switch len(t.inflight) {
	case 0:
		return true
	case 1:
		return t.idling
	}
	return false
}

// command is a complete client command line; head is its first bytes.
func (t *tracker) command(head []byte) {
	if t.idling && bytes.EqualFold(bytes.TrimSpace(head), []byte("DONE")) {
		t.idling = false // IDLE stays in flight until its tagged OK
		return
	}
	tag, rest := token(head)
	name, _ := token(rest)
	if len(tag) == 0 {
		return
	}
	if len(t.inflight) >= maxInflight {
		t.opaque = true
		return
	}
	n := string(bytes.ToUpper(name))
	t.inflight = append(t.inflight, pending{tag: string(tag), name: n})
	t.idling = n == "IDLE"
}

// response is a complete upstream response line.
func (t *tracker) response(head []byte) {
	tag, rest := token(head)
	if len(tag) == 0 || string(tag) == "*" || tag[0] == '+' {
		return
	}
	for i, c := range t.inflight {
		if c.tag != string(tag) {
			continue
		}
		t.inflight = append(t.inflight[:i], t.inflight[i+1:]...)
		if c.name == "IDLE" {
			t.idling = false
		}
		if status, _ := token(rest); c.name == "COMPRESS" && bytes.EqualFold(status, []byte("OK")) {
			t.opaque = true
		}
		return
	}
	// A command refused before its synchronising literal was sent: the
	// client sends no literal, and its next bytes are a command.
	if t.up.cont && t.up.tag == string(tag) {
		t.up.reset()
	}
}

// token splits off the first space-separated token of b.
func token(b []byte) (tok, rest []byte) {
	if i := bytes.IndexByte(b, ' '); i >= 0 {
		return b[:i], b[i+1:]
	}
	return bytes.TrimRight(b, "\r\n"), nil
}

const (
	headBytes = 64 // of a line: the tag, the command or status
	tailBytes = 24 // of a line segment: a literal's announcement, {n}
)

// stream is where one direction is: in a line, in a literal, or between
// lines.
type stream struct {
	literal int64 // literal bytes still to come
	// cont: the current line continues after a literal.
	cont bool
	// tag is the first token of the line being read, once known.
	tag  string
	head [headBytes]byte
	nh   int
	tail [tailBytes]byte
	nt   int
}

func (s *stream) atBoundary() bool { return s.literal == 0 && !s.cont && s.nh == 0 && s.nt == 0 }

func (s *stream) reset() { *s = stream{} }

// feed consumes p, calling line with the head of each complete line.
func (s *stream) feed(p []byte, line func(head []byte)) {
	for len(p) > 0 {
		if s.literal > 0 {
			n := int64(len(p))
			if n > s.literal {
				n = s.literal
			}
			s.literal -= n
			p = p[n:]
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.add(p)
			return
		}
		s.add(p[:i+1])
		p = p[i+1:]
		if n, ok := literalAnnounced(s.tail[:s.nt]); ok {
			// The line goes on after n bytes of literal.
			s.literal, s.cont, s.nt = n, true, 0
			if s.tag == "" {
				tag, _ := token(s.head[:s.nh])
				s.tag = string(tag)
			}
			continue
		}
		line(s.head[:s.nh])
		s.reset()
	}
}

// add appends a piece of the current line: its head (before any literal)
// and a rolling tail.
func (s *stream) add(p []byte) {
	if !s.cont && s.nh < headBytes {
		s.nh += copy(s.head[s.nh:], p)
	}
	if len(p) >= tailBytes {
		s.nt = copy(s.tail[:], p[len(p)-tailBytes:])
		return
	}
	if s.nt+len(p) > tailBytes {
		drop := s.nt + len(p) - tailBytes
		copy(s.tail[:], s.tail[drop:s.nt])
		s.nt -= drop
	}
	s.nt += copy(s.tail[s.nt:], p)
}

// literalAnnounced parses a line segment's end, "{n}\r\n", "{n+}\r\n" or
// "{n-}\r\n" (LITERAL+, LITERAL-; literal8's "~{n}" alike).
func literalAnnounced(seg []byte) (int64, bool) {
	seg = bytes.TrimSuffix(seg, []byte("\n"))
	seg = bytes.TrimSuffix(seg, []byte("\r"))
	if len(seg) < 3 || seg[len(seg)-1] != '}' {
		return 0, false
	}
	seg = seg[:len(seg)-1]
	if c := seg[len(seg)-1]; c == '+' || c == '-' {
		seg = seg[:len(seg)-1]
	}
	i := bytes.LastIndexByte(seg, '{')
	if i < 0 || i == len(seg)-1 || len(seg)-i-1 > 19 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(seg[i+1:]), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
