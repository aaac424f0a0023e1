package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// Line limits before login. RFC 2449 §4 bounds a command to 255 octets
// with its CRLF; clients that send long user names exceed it, and
// Exchange accepts 512 (Set-PopSettings MaxCommandSize), so the proxy does
// too. An AUTH command with an initial response and a SASL response are
// exempt from the 255 (RFC 5034 §4): they may take maxAuthLine, room for a
// PLAIN response of three maximal fields in base64.
const (
	maxCommandLine = 512
	maxAuthLine    = 2048
	// maxDiscard bounds how much of an overlong line is skipped to reach
	// its end; a longer one ends the session.
	maxDiscard = 64 << 10
	// readBuffer is the client reader's size before login; it holds a
	// whole line of maxAuthLine.
	readBuffer = 4 << 10
)

var (
	// errLineTooLong: the line exceeded its limit; the rest of it was
	// skipped and the session can go on.
	errLineTooLong = errors.New("line too long")
	// errLineRunaway: no line end within maxDiscard: the session ends.
	errLineRunaway = errors.New("line too long, no line end in sight")
	// errBadChars: the line holds a NUL or a bare CR.
	errBadChars = errors.New("invalid characters in line")
)

// readLine reads one line of at most limit octets with its line end
// (CRLF, or a bare LF from lenient clients) and returns it without.
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, skipLine(br, len(line))
	}
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if len(line) > limit {
		return nil, errLineTooLong
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if bytes.IndexByte(line, 0) >= 0 || bytes.IndexByte(line, '\r') >= 0 {
		return nil, errBadChars
	}
	return line, nil
}

// skipLine discards the rest of an overlong line, of which n octets were
// read.
func skipLine(br *bufio.Reader, n int) error {
	for n <= maxDiscard {
		b, err := br.ReadSlice('\n')
		n += len(b)
		switch {
		case err == nil:
			if n > maxDiscard {
				return errLineRunaway
			}
			return errLineTooLong
		case !errors.Is(err, bufio.ErrBufferFull):
			return err
		}
	}
	return errLineRunaway
}

// command is one parsed command line.
type command struct {
	// name is the keyword, upper case.
	name string
	// args are the arguments separated by spaces; rest is everything
	// after the keyword and its space, verbatim (PASS takes the whole of
	// it: passwords may hold spaces).
	args []string
	rest string
}

// parseCommand splits a command line (RFC 1939 §3: a keyword, then
// arguments separated by single spaces; the proxy accepts runs of
// spaces).
func parseCommand(line []byte) *command {
	s := string(line)
	name, rest, _ := strings.Cut(s, " ")
	return &command{name: strings.ToUpper(name), args: strings.Fields(rest), rest: rest}
}
