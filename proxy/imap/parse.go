package imap

import (
	"bufio"
	"errors"
	"io"
	"strings"
)

// Bounds of what a client may send before login. Credentials are short, but
// ID's parameters (RFC 2971: 30 pairs of values up to 1024 octets) come in
// one line: imaptest sends one of 31 KB, which Dovecot accepts.
const (
	maxLine    = 64 << 10 // one line, CRLF included
	maxLiteral = 4 << 10  // one literal
	maxCommand = 80 << 10 // one command: its lines and literals
	// readBuffer is the reader's buffer; the rare longer line is
	// gathered in memory of its own, so that an idle session holds only
	// this much.
	readBuffer = 4 << 10
)

var (
	// errSyntax and errLiteralTooLarge fail one command; the session goes on.
	errSyntax          = errors.New("syntax error")
	errLiteralTooLarge = errors.New("literal too large")
)

// syntaxError is a command the session answers with BAD. If fatal, the
// input cannot be resynchronised and the connection must end.
type syntaxError struct {
	tag   string // "" when the line has no valid tag: the answer is untagged
	text  string
	fatal bool
}

func (e *syntaxError) Error() string { return e.text }

// command is a command parsed before login. Only the commands handled
// locally have their arguments parsed.
type command struct {
	tag  string
	name string   // upper case
	args [][]byte // LOGIN: user, password; AUTHENTICATE: mechanism [, initial response]
}

// commandReader reads pre-login commands (RFC 3501 §9 / RFC 9051 §9 syntax).
type commandReader struct {
	br *bufio.Reader
	// cont asks the client for a synchronising literal's octets (RFC 3501
	// §7.5).
	cont func() error

	line []byte // the unparsed rest of the current line, without CRLF
	size int    // octets of the current command so far
}

func newCommandReader(r io.Reader, cont func() error) *commandReader {
	return &commandReader{br: bufio.NewReaderSize(r, readBuffer), cont: cont}
}

var (
	errLineTooLong    = &syntaxError{text: "Line too long", fatal: true}
	errCommandTooLong = &syntaxError{text: "Command too long", fatal: true}
)

// readLine makes the next line current.
func (r *commandReader) readLine() error {
	l, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		long := append(make([]byte, 0, 2*len(l)), l...)
		for errors.Is(err, bufio.ErrBufferFull) {
			l, err = r.br.ReadSlice('\n')
			if len(long)+len(l) > maxLine {
				return errLineTooLong
			}
			long = append(long, l...)
		}
		l = long
	}
	if err != nil {
		if err == io.EOF && len(l) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if r.size += len(l); r.size > maxCommand {
		return errCommandTooLong
	}
	l = l[:len(l)-1]
	if n := len(l); n > 0 && l[n-1] == '\r' {
		l = l[:n-1]
	}
	r.line = l
	return nil
}

// readResponseLine reads one line of an AUTHENTICATE exchange.
func (r *commandReader) readResponseLine() ([]byte, error) {
	r.size = 0
	if err := r.readLine(); err != nil {
		return nil, err
	}
	l := append([]byte(nil), r.line...)
	r.line = nil
	return l, nil
}

// readCommand reads one command. Errors are *syntaxError or I/O errors.
func (r *commandReader) readCommand() (*command, error) {
	r.size = 0
	if err := r.readLine(); err != nil {
		return nil, err
	}
	tag := r.tag()
	if tag == "" {
		return nil, r.fail("", "Invalid tag")
	}
	if !r.consume(' ') {
		return nil, r.fail(tag, "Missing command")
	}
	name, ok := r.atom(false)
	if !ok {
		return nil, r.fail(tag, "Invalid command")
	}
	cmd := &command{tag: tag, name: strings.ToUpper(name)}
	var err error
	switch cmd.name {
	case "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS":
	case "LOGIN":
		cmd.args, err = r.loginArgs()
	case "AUTHENTICATE":
		cmd.args, err = r.authenticateArgs()
	case "ID":
		err = r.idArgs()
	default:
		// Refused before login whatever its arguments.
		if err := r.skip(); err != nil {
			return nil, r.fatal(tag, err)
		}
		return cmd, nil
	}
	if err == nil && len(r.line) != 0 {
		err = errSyntax
	}
	switch err {
	case nil:
		return cmd, nil
	case errSyntax:
		return nil, r.fail(tag, "Syntax error")
	case errLiteralTooLarge:
		return nil, r.fail(tag, "Literal too large")
	}
	return nil, r.fatal(tag, err)
}

// fail discards the rest of the command and returns the error to answer.
func (r *commandReader) fail(tag, text string) error {
	if err := r.skip(); err != nil {
		return r.fatal(tag, err)
	}
	return &syntaxError{tag: tag, text: text}
}

// fatal tags a fatal syntax error; I/O errors pass through.
func (r *commandReader) fatal(tag string, err error) error {
	var se *syntaxError
	if errors.As(err, &se) {
		return &syntaxError{tag: tag, text: se.text, fatal: true}
	}
	return err
}

// skip discards the rest of the current command. A synchronising literal
// ends it: without our continuation request the client must not send its
// octets (RFC 3501 §7.5). A non-synchronising literal (RFC 7888) arrives
// anyway and is read and dropped, within the pre-login bounds.
func (r *commandReader) skip() error {
	for {
		n, sync, ok := trailingLiteral(r.line)
		r.line = nil
		if !ok || sync {
			return nil
		}
		if n > maxLiteral {
			return &syntaxError{text: "Literal too large", fatal: true}
		}
		if r.size += int(n); r.size > maxCommand {
			return errCommandTooLong
		}
		if _, err := r.br.Discard(int(n)); err != nil {
			return err
		}
		if err := r.readLine(); err != nil {
			return err
		}
	}
}

func (r *commandReader) loginArgs() ([][]byte, error) {
	if !r.consume(' ') {
		return nil, errSyntax
	}
	user, err := r.astring()
	if err != nil {
		return nil, err
	}
	if !r.consume(' ') {
		return nil, errSyntax
	}
	pass, err := r.astring()
	if err != nil {
		return nil, err
	}
	return [][]byte{user, pass}, nil
}

// authenticateArgs parses "SP auth-type [SP (base64 / "=")]" (RFC 4959).
func (r *commandReader) authenticateArgs() ([][]byte, error) {
	if !r.consume(' ') {
		return nil, errSyntax
	}
	mech, ok := r.atom(false)
	if !ok {
		return nil, errSyntax
	}
	args := [][]byte{[]byte(mech)}
	if r.consume(' ') {
		ir, ok := r.atom(false)
		if !ok {
			return nil, errSyntax
		}
		args = append(args, []byte(ir))
	}
	return args, nil
}

// idArgs parses the ID parameter list (RFC 2971 §4), whose content is
// ignored: "SP (NIL / "(" [string SP nstring *(SP string SP nstring)] ")")".
func (r *commandReader) idArgs() error {
	if !r.consume(' ') {
		return errSyntax
	}
	if r.consumeNIL() {
		return nil
	}
	if !r.consume('(') {
		return errSyntax
	}
	if r.consume(')') {
		return nil
	}
	for {
		if _, err := r.str(); err != nil {
			return err
		}
		if !r.consume(' ') {
			return errSyntax
		}
		if !r.consumeNIL() {
			if _, err := r.str(); err != nil {
				return err
			}
		}
		if r.consume(')') {
			return nil
		}
		if !r.consume(' ') {
			return errSyntax
		}
	}
}

func (r *commandReader) consume(c byte) bool {
	if len(r.line) > 0 && r.line[0] == c {
		r.line = r.line[1:]
		return true
	}
	return false
}

// consumeNIL consumes NIL, when the next token is exactly that.
func (r *commandReader) consumeNIL() bool {
	if len(r.line) >= 3 && strings.EqualFold(string(r.line[:3]), "NIL") &&
		(len(r.line) == 3 || !isAstringChar(r.line[3])) {
		r.line = r.line[3:]
		return true
	}
	return false
}

// tag consumes a tag: 1*<any ASTRING-CHAR except "+">.
func (r *commandReader) tag() string {
	i := 0
	for i < len(r.line) && isAstringChar(r.line[i]) && r.line[i] != '+' {
		i++
	}
	t := string(r.line[:i])
	r.line = r.line[i:]
	return t
}

// atom consumes 1*ATOM-CHAR, or 1*ASTRING-CHAR if astring is set.
func (r *commandReader) atom(astring bool) (string, bool) {
	i := 0
	for i < len(r.line) && (isAtomChar(r.line[i]) || astring && r.line[i] == ']') {
		i++
	}
	a := string(r.line[:i])
	r.line = r.line[i:]
	return a, i > 0
}

// astring consumes an atom, a quoted string or a literal.
func (r *commandReader) astring() ([]byte, error) {
	if len(r.line) > 0 && (r.line[0] == '"' || r.line[0] == '{') {
		return r.str()
	}
	a, ok := r.atom(true)
	if !ok {
		return nil, errSyntax
	}
	return []byte(a), nil
}

// str consumes a quoted string or a literal.
func (r *commandReader) str() ([]byte, error) {
	if len(r.line) == 0 {
		return nil, errSyntax
	}
	switch r.line[0] {
	case '"':
		return r.quoted()
	case '{':
		return r.literal()
	}
	return nil, errSyntax
}

func (r *commandReader) quoted() ([]byte, error) {
	out := []byte{}
	for i := 1; i < len(r.line); i++ {
		switch c := r.line[i]; c {
		case '"':
			r.line = r.line[i+1:]
			return out, nil
		case '\\':
			i++
			if i == len(r.line) || r.line[i] != '"' && r.line[i] != '\\' {
				return nil, errSyntax
			}
			out = append(out, r.line[i])
		case 0, '\r':
			return nil, errSyntax
		default:
			// Octets above 0x7F are not TEXT-CHARs in RFC 3501, but clients
			// send UTF-8 passwords this way (RFC 9051 §6.3.5 allows it).
			out = append(out, c)
		}
	}
	return nil, errSyntax
}

// literal reads a literal whose "{n}" or "{n+}" ends the current line, then
// makes the line after it current.
func (r *commandReader) literal() ([]byte, error) {
	n, sync, ok := trailingLiteral(r.line)
	if !ok || literalMarkerLen(r.line) != len(r.line) {
		return nil, errSyntax
	}
	if n > maxLiteral {
		// The rest of the line stays for skip, which refuses a
		// non-synchronising literal this large.
		return nil, errLiteralTooLarge
	}
	r.line = nil
	if sync {
		if err := r.cont(); err != nil {
			return nil, err
		}
	}
	if r.size += int(n); r.size > maxCommand {
		return nil, errCommandTooLong
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r.br, b); err != nil {
		return nil, err
	}
	if err := r.readLine(); err != nil {
		return nil, err
	}
	return b, nil
}

// trailingLiteral reports whether line ends with a literal's "{n}" or
// "{n+}", and its size. Sizes beyond maxCommand are reported as
// maxCommand+1.
func trailingLiteral(line []byte) (n int64, sync, ok bool) {
	l := literalMarkerLen(line)
	if l == 0 {
		return 0, false, false
	}
	m := line[len(line)-l+1 : len(line)-1]
	sync = true
	if m[len(m)-1] == '+' {
		sync, m = false, m[:len(m)-1]
	}
	for _, c := range m {
		n = n*10 + int64(c-'0')
		if n > maxCommand {
			n = maxCommand + 1
			break
		}
	}
	return n, sync, true
}

// literalMarkerLen returns the length of the "{n}" or "{n+}" ending line, or
// 0.
func literalMarkerLen(line []byte) int {
	i := len(line) - 1
	if i < 0 || line[i] != '}' {
		return 0
	}
	i--
	if i >= 0 && line[i] == '+' {
		i--
	}
	end := i
	for i >= 0 && line[i] >= '0' && line[i] <= '9' {
		i--
	}
	if i == end || i < 0 || line[i] != '{' {
		return 0
	}
	return len(line) - i
}

// isAtomChar reports whether c is an ATOM-CHAR: any CHAR except
// atom-specials (RFC 3501 §9).
func isAtomChar(c byte) bool {
	if c <= ' ' || c >= 0x7f {
		return false
	}
	switch c {
	case '(', ')', '{', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}

func isAstringChar(c byte) bool { return isAtomChar(c) || c == ']' }
