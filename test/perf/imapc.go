package main

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The benchmark's own IMAP and SMTP clients are small and fast, the same
// code on both paths, so that what differs between the paths is broker.

const (
	// ioTimeout bounds every exchange of the clients; a 100 MiB message
	// takes seconds.
	ioTimeout = 5 * time.Minute
	// readBuffer is the clients' read buffer.
	readBuffer = 64 << 10
	// maxLine bounds a response line other than a literal.
	maxLine = 1 << 20
)

// imapConn is an IMAP client connection.
type imapConn struct {
	c   net.Conn
	r   *bufio.Reader
	tag int
}

// dialIMAP connects, with implicit TLS when conf is set, and reads the
// greeting.
func dialIMAP(addr string, conf *tls.Config) (*imapConn, error) {
	nc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(ioTimeout))
	if conf != nil {
		tc := tls.Client(nc, conf)
		if err := tc.Handshake(); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS with %s: %v", addr, err)
		}
		nc = tc
	}
	c := &imapConn{c: nc, r: bufio.NewReaderSize(nc, readBuffer)}
	line, err := c.line()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting of %s: %v", addr, err)
	}
	if !strings.HasPrefix(line, "* OK") {
		nc.Close()
		return nil, fmt.Errorf("greeting of %s: %q", addr, line)
	}
	return c, nil
}

func (c *imapConn) Close() error { return c.c.Close() }

// line reads one line without its CRLF.
func (c *imapConn) line() (string, error) {
	var b []byte
	for {
		frag, err := c.r.ReadSlice('\n')
		b = append(b, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return "", err
		}
		if len(b) > maxLine {
			return "", errors.New("response line too long")
		}
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

var literalRE = regexp.MustCompile(`\{(\d+)\+?\}$`)

// literalFunc consumes a literal of n bytes from r; prefix is the response
// text before it.
type literalFunc func(prefix string, n int64, r io.Reader) error

// command sends a tagged command and reads the response up to its tagged
// completion; literals go to lit, or are skipped when lit is nil. It
// returns the untagged lines (literals left out) and fails unless OK.
func (c *imapConn) command(cmd string, lit literalFunc) ([]string, error) {
	c.tag++
	tag := "p" + strconv.Itoa(c.tag)
	c.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c.c, tag+" "+cmd+"\r\n"); err != nil {
		return nil, err
	}
	return c.response(tag, lit)
}

// response reads until the line tagged tag.
func (c *imapConn) response(tag string, lit literalFunc) ([]string, error) {
	var untagged []string
	for {
		line, err := c.line()
		if err != nil {
			return untagged, err
		}
		// A line may carry literals, each followed by more of the line.
		full := line
		for {
			m := literalRE.FindStringSubmatch(line)
			if m == nil {
				break
			}
			n, err := strconv.ParseInt(m[1], 10, 64)
			if err != nil {
				return untagged, err
			}
			lr := io.LimitReader(c.r, n)
			if lit != nil {
				if err := lit(full, n, lr); err != nil {
					return untagged, err
				}
			}
			if _, err := io.Copy(io.Discard, lr); err != nil {
				return untagged, err
			}
			if line, err = c.line(); err != nil {
				return untagged, err
			}
			full += " " + line
		}
		if rest, ok := strings.CutPrefix(full, tag+" "); ok {
			if strings.HasPrefix(rest, "OK") {
				return untagged, nil
			}
			return untagged, fmt.Errorf("%s", rest)
		}
		untagged = append(untagged, full)
	}
}

// login sends LOGIN with quoted strings (app passwords and mailboxes need
// no escaping beyond it).
func (c *imapConn) login(user, password string) error {
	_, err := c.command("LOGIN "+quote(user)+" "+quote(password), nil)
	return err
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// xoauth2 authenticates with SASL-IR, as a modern direct client does. A
// refusal comes as a challenge, answered empty.
func (c *imapConn) xoauth2(user, token string) error {
	c.tag++
	tag := "p" + strconv.Itoa(c.tag)
	c.c.SetDeadline(time.Now().Add(ioTimeout))
	ir := base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
	if _, err := io.WriteString(c.c, tag+" AUTHENTICATE XOAUTH2 "+ir+"\r\n"); err != nil {
		return err
	}
	for {
		line, err := c.line()
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(line, "+"):
			if _, err := io.WriteString(c.c, "\r\n"); err != nil {
				return err
			}
		case strings.HasPrefix(line, tag+" OK"):
			return nil
		case strings.HasPrefix(line, tag+" "):
			return fmt.Errorf("AUTHENTICATE XOAUTH2: %s", strings.TrimPrefix(line, tag+" "))
		}
	}
}

// logout ends the session and waits for the server's close.
func (c *imapConn) logout() error {
	_, err := c.command("LOGOUT", nil)
	c.c.Close()
	return err
}

// exists is the message count in the untagged responses, -1 without one.
func exists(untagged []string) int {
	n := -1
	for _, l := range untagged {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "*" && f[2] == "EXISTS" {
			if v, err := strconv.Atoi(f[1]); err == nil {
				n = v
			}
		}
	}
	return n
}

var uidRE = regexp.MustCompile(`\bUID (\d+)`)

// fetchUID fetches one message's BODY[] by UID into w and returns its
// length.
func (c *imapConn) fetchUID(uid uint32, w io.Writer) (int64, error) {
	var size int64 = -1
	_, err := c.command(fmt.Sprintf("UID FETCH %d (BODY.PEEK[])", uid), func(prefix string, n int64, r io.Reader) error {
		if !strings.Contains(prefix, "BODY[]") {
			return nil
		}
		size = n
		_, err := io.Copy(w, r)
		return err
	})
	if err == nil && size < 0 {
		err = fmt.Errorf("UID FETCH %d: no BODY[] in the response", uid)
	}
	return size, err
}

var appendUIDRE = regexp.MustCompile(`^OK \[APPENDUID \d+ (\d+)\]`)

// appendMessage appends msg to INBOX and returns its UID (UIDPLUS).
func (c *imapConn) appendMessage(msg []byte) (uint32, error) {
	c.tag++
	tag := "p" + strconv.Itoa(c.tag)
	c.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := fmt.Fprintf(c.c, "%s APPEND INBOX {%d}\r\n", tag, len(msg)); err != nil {
		return 0, err
	}
	line, err := c.line()
	if err != nil {
		return 0, err
	}
	if !strings.HasPrefix(line, "+") {
		return 0, fmt.Errorf("APPEND: %s", line)
	}
	bufs := net.Buffers{msg, []byte("\r\n")}
	if _, err := bufs.WriteTo(c.c); err != nil {
		return 0, err
	}
	for {
		line, err := c.line()
		if err != nil {
			return 0, err
		}
		rest, ok := strings.CutPrefix(line, tag+" ")
		if !ok {
			continue
		}
		m := appendUIDRE.FindStringSubmatch(rest)
		if m == nil {
			return 0, fmt.Errorf("APPEND: %s", rest)
		}
		uid, err := strconv.ParseUint(m[1], 10, 32)
		return uint32(uid), err
	}
}
