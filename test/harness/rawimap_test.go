package harness

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// rawConn speaks IMAP by hand. imapclient answers an error challenge with
// "=", which Dovecot refuses as invalid base64 (BAD), so refusals are
// checked without it.
type rawConn struct {
	t    *testing.T
	conn *tls.Conn
	r    *bufio.Reader
}

func rawDial(t *testing.T, dv *Dovecot) *rawConn {
	t.Helper()
	conn, err := tls.Dial("tcp", dv.IMAPAddr, dv.TLSConfig())
	if err != nil {
		t.Fatalf("dial %s: %v", dv.IMAPAddr, err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := &rawConn{t: t, conn: conn, r: bufio.NewReader(conn)}
	if g := c.readLine(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("got greeting %q, want * OK", g)
	}
	return c
}

func (c *rawConn) readLine() string {
	c.t.Helper()
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading: %v", err)
	}
	return strings.TrimRight(line, "\r\n")
}

func (c *rawConn) write(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s + "\r\n")); err != nil {
		c.t.Fatalf("writing: %v", err)
	}
}

// authenticate runs AUTHENTICATE XOAUTH2 and returns the tagged reply.
func (c *rawConn) authenticate(user, token string) string {
	c.t.Helper()
	c.write("a AUTHENTICATE XOAUTH2 " + base64.StdEncoding.EncodeToString(xoauth2.Response(user, token)))
	for {
		line := c.readLine()
		switch {
		case strings.HasPrefix(line, "+"):
			// The error challenge: an empty line asks for the final reply.
			c.write("")
		case strings.HasPrefix(line, "a "):
			return line
		}
	}
}

func rawAuthenticate(t *testing.T, dv *Dovecot, user, token string) string {
	t.Helper()
	return rawDial(t, dv).authenticate(user, token)
}
