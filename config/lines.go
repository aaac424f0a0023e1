package config

import (
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// keyLines knows the line of each key in a TOML document that has already
// parsed. The toml package keeps positions only per unindexed key, so it
// cannot tell the second [[account]]'s app from the first's.
type keyLines struct {
	// byPath maps an indexed path such as "account[2].app" or
	// "imap.listen[1]" to its line.
	byPath map[string]int
	// byKey maps an unindexed key, as toml.Key.String spells it, to its
	// occurrences in file order, for matching MetaData.Undecoded.
	byKey map[string][]keyLine
}

type keyLine struct {
	path string
	line int
}

// line returns the line of path, or of its closest ancestor that has one,
// so that a missing key is reported at the header of its table.
func (k *keyLines) line(path string) int {
	for path != "" {
		if l, ok := k.byPath[path]; ok {
			return l
		}
		path = parentPath(path)
	}
	return 0
}

func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// occurrence returns the n-th (0-based) occurrence of key; the last one if
// there are fewer, the zero keyLine if none.
func (k *keyLines) occurrence(key string, n int) keyLine {
	occ := k.byKey[key]
	if len(occ) == 0 {
		return keyLine{}
	}
	return occ[min(n, len(occ)-1)]
}

// tomlPath is a table or key: its indexed form for messages, and its plain
// segments for toml.Key.
type tomlPath struct {
	indexed string
	segs    []string
}

func (p tomlPath) child(seg string) tomlPath {
	segs := append(p.segs[:len(p.segs):len(p.segs)], seg)
	if p.indexed == "" {
		return tomlPath{seg, segs}
	}
	return tomlPath{p.indexed + "." + seg, segs}
}

func (p tomlPath) element(n int) tomlPath {
	return tomlPath{p.indexed + "[" + strconv.Itoa(n) + "]", p.segs}
}

// maxDepth bounds nesting of arrays and inline tables, and the segments of
// a key, which would otherwise cost quadratic time; deeper documents simply
// lose line information.
const maxDepth = 64

type lineScanner struct {
	data  []byte
	i     int
	line  int
	depth int
	out   keyLines
	// arrays counts [[name]] headers per indexed name; current maps the
	// plain name of an array of tables to its latest element.
	arrays  map[string]int
	current map[string]string
}

// scanKeyLines is lenient: it assumes data is valid TOML, and on anything
// else it stops or skips ahead, never loops or panics.
func scanKeyLines(data []byte) *keyLines {
	s := &lineScanner{
		data:    data,
		line:    1,
		out:     keyLines{byPath: map[string]int{}, byKey: map[string][]keyLine{}},
		arrays:  map[string]int{},
		current: map[string]string{},
	}
	s.document()
	return &s.out
}

func (s *lineScanner) peek(off int) byte {
	if s.i+off < len(s.data) {
		return s.data[s.i+off]
	}
	return 0
}

func (s *lineScanner) eof() bool { return s.i >= len(s.data) }

func (s *lineScanner) advance() {
	if s.data[s.i] == '\n' {
		s.line++
	}
	s.i++
}

func (s *lineScanner) skipSpace() {
	for !s.eof() && (s.data[s.i] == ' ' || s.data[s.i] == '\t') {
		s.i++
	}
}

// skipBlank skips whitespace, newlines and comments.
func (s *lineScanner) skipBlank() {
	for !s.eof() {
		switch s.data[s.i] {
		case ' ', '\t', '\r', '\n':
			s.advance()
		case '#':
			for !s.eof() && s.data[s.i] != '\n' {
				s.i++
			}
		default:
			return
		}
	}
}

func (s *lineScanner) document() {
	var table tomlPath
	for {
		s.skipBlank()
		if s.eof() {
			return
		}
		start := s.i
		line := s.line
		switch {
		case s.peek(0) == '[' && s.peek(1) == '[':
			s.i += 2
			table = s.arrayTable(s.key(), line)
		case s.peek(0) == '[':
			s.i++
			table = s.table(s.key(), line)
		default:
			s.keyValue(table)
		}
		// Skip the rest of the line: "]]", a comment, or whatever this
		// scanner did not understand.
		for !s.eof() && s.data[s.i] != '\n' {
			s.i++
		}
		if s.i == start {
			s.advance()
		}
	}
}

// resolve turns the plain segments of a header into an indexed path, using
// the latest element of every array of tables it passes through.
func (s *lineScanner) resolve(segs []string) tomlPath {
	var p tomlPath
	for _, seg := range segs {
		p = p.child(seg)
		if cur, ok := s.current[toml.Key(p.segs).String()]; ok {
			p.indexed = cur
		}
	}
	return p
}

func (s *lineScanner) table(segs []string, line int) tomlPath {
	if len(segs) == 0 || len(segs) > maxDepth {
		return tomlPath{}
	}
	p := s.resolve(segs)
	s.record(p, line)
	return p
}

func (s *lineScanner) arrayTable(segs []string, line int) tomlPath {
	if len(segs) == 0 || len(segs) > maxDepth {
		return tomlPath{}
	}
	p := s.resolve(segs[:len(segs)-1]).child(segs[len(segs)-1])
	s.arrays[p.indexed]++
	elem := p.element(s.arrays[p.indexed])
	s.current[toml.Key(p.segs).String()] = elem.indexed
	s.record(elem, line)
	return elem
}

func (s *lineScanner) record(p tomlPath, line int) {
	if _, ok := s.out.byPath[p.indexed]; !ok {
		s.out.byPath[p.indexed] = line
	}
	k := toml.Key(p.segs).String()
	s.out.byKey[k] = append(s.out.byKey[k], keyLine{p.indexed, line})
}

// key reads a dotted key such as a."b".c and returns its segments.
func (s *lineScanner) key() []string {
	var segs []string
	for {
		s.skipSpace()
		seg, ok := s.simpleKey()
		if !ok {
			return segs
		}
		segs = append(segs, seg)
		s.skipSpace()
		if s.peek(0) != '.' {
			return segs
		}
		s.i++
	}
}

func (s *lineScanner) simpleKey() (string, bool) {
	start := s.i
	switch s.peek(0) {
	case '"':
		s.basicString()
		raw := string(s.data[start:s.i])
		if u, err := strconv.Unquote(raw); err == nil {
			return u, true
		}
		return strings.Trim(raw, `"`), true
	case '\'':
		s.literalString()
		return strings.Trim(string(s.data[start:s.i]), "'"), true
	}
	for !s.eof() && isBareKeyChar(s.data[s.i]) {
		s.i++
	}
	return string(s.data[start:s.i]), s.i > start
}

func isBareKeyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

func (s *lineScanner) keyValue(table tomlPath) {
	line := s.line
	segs := s.key()
	if len(segs) == 0 {
		return
	}
	s.skipSpace()
	if s.peek(0) != '=' {
		return
	}
	s.i++
	p := table
	if len(p.segs)+len(segs) > maxDepth {
		s.value(tomlPath{})
		return
	}
	for _, seg := range segs {
		p = p.child(seg)
		s.record(p, line)
	}
	s.value(p)
}

func (s *lineScanner) value(p tomlPath) {
	s.skipSpace()
	switch {
	case s.peek(0) == '"' && s.peek(1) == '"' && s.peek(2) == '"':
		s.multiLineString('"')
	case s.peek(0) == '\'' && s.peek(1) == '\'' && s.peek(2) == '\'':
		s.multiLineString('\'')
	case s.peek(0) == '"':
		s.basicString()
	case s.peek(0) == '\'':
		s.literalString()
	case s.peek(0) == '[':
		s.nested(func() { s.array(p) })
	case s.peek(0) == '{':
		s.nested(func() { s.inlineTable(p) })
	default:
		for !s.eof() && !strings.ContainsRune(",]}#\r\n", rune(s.data[s.i])) {
			s.i++
		}
	}
}

func (s *lineScanner) nested(f func()) {
	if s.depth >= maxDepth {
		s.i = len(s.data)
		return
	}
	s.depth++
	f()
	s.depth--
}

func (s *lineScanner) array(p tomlPath) {
	s.i++ // [
	for n := 1; ; {
		s.skipBlank()
		switch s.peek(0) {
		case 0:
			s.i = len(s.data)
			return
		case ']':
			s.i++
			return
		case ',':
			s.i++
			continue
		}
		start := s.i
		elem := p.element(n)
		s.out.byPath[elem.indexed] = s.line
		s.value(elem)
		n++
		if s.i == start {
			s.advance()
		}
	}
}

func (s *lineScanner) inlineTable(p tomlPath) {
	s.i++ // {
	for {
		s.skipBlank()
		switch s.peek(0) {
		case 0:
			s.i = len(s.data)
			return
		case '}':
			s.i++
			return
		case ',':
			s.i++
			continue
		}
		start := s.i
		s.keyValue(p)
		if s.i == start {
			s.advance()
		}
	}
}

// basicString skips a "string", honouring backslash escapes.
func (s *lineScanner) basicString() {
	s.i++
	for !s.eof() {
		switch s.data[s.i] {
		case '\\':
			s.i++
		case '"':
			s.i++
			return
		case '\n':
			return
		}
		s.i++
	}
}

func (s *lineScanner) literalString() {
	s.i++
	for !s.eof() {
		switch s.data[s.i] {
		case '\'':
			s.i++
			return
		case '\n':
			return
		}
		s.i++
	}
}

// multiLineString skips a """ or ”' string, which may end in up to two
// extra quotes that belong to its content.
func (s *lineScanner) multiLineString(q byte) {
	s.i += 3
	for !s.eof() {
		c := s.data[s.i]
		if c == '\\' && q == '"' {
			s.i++
			if !s.eof() {
				s.advance()
			}
			continue
		}
		if c == q && s.peek(1) == q && s.peek(2) == q {
			s.i += 3
			for n := 0; n < 2 && s.peek(0) == q; n++ {
				s.i++
			}
			return
		}
		s.advance()
	}
}
