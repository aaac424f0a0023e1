package main

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// smtpConn is an SMTP client connection.
type smtpConn struct {
	c net.Conn
	r *bufio.Reader
}

// dialSMTP connects and reads the greeting.
func dialSMTP(addr string) (*smtpConn, error) {
	nc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, err
	}
	c := &smtpConn{c: nc, r: bufio.NewReaderSize(nc, readBuffer)}
	nc.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.expect(220); err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting of %s: %v", addr, err)
	}
	return c, nil
}

func (c *smtpConn) Close() error { return c.c.Close() }

// reply reads a whole reply, multi-line ones too.
func (c *smtpConn) reply() (code int, text string, err error) {
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(lines, "\n"), err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			return 0, line, fmt.Errorf("malformed reply %q", line)
		}
		lines = append(lines, line)
		if line[3] != '-' {
			if _, err := fmt.Sscanf(line[:3], "%d", &code); err != nil {
				return 0, line, fmt.Errorf("malformed reply %q", line)
			}
			return code, strings.Join(lines, "\n"), nil
		}
	}
}

// expect reads a reply and fails unless its code is want.
func (c *smtpConn) expect(want int) (string, error) {
	code, text, err := c.reply()
	if err != nil {
		return text, err
	}
	if code != want {
		return text, fmt.Errorf("got %q, want %d", text, want)
	}
	return text, nil
}

// cmd sends a command and expects the code want.
func (c *smtpConn) cmd(want int, line string) (string, error) {
	c.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c.c, line+"\r\n"); err != nil {
		return "", err
	}
	text, err := c.expect(want)
	if err != nil {
		verb, _, _ := strings.Cut(line, " ")
		return text, fmt.Errorf("%s: %v", verb, err)
	}
	return text, nil
}

// startTLS upgrades the connection and says EHLO again.
func (c *smtpConn) startTLS(conf *tls.Config) error {
	if _, err := c.cmd(220, "STARTTLS"); err != nil {
		return err
	}
	tc := tls.Client(c.c, conf)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("STARTTLS handshake: %v", err)
	}
	c.c = tc
	c.r.Reset(tc)
	_, err := c.cmd(250, "EHLO perf.test")
	return err
}

func (c *smtpConn) authPlain(user, password string) error {
	_, err := c.cmd(235, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password)))
	return err
}

// authXOAUTH2 sends the initial response inline; a refusal comes as a 334
// challenge, answered empty.
func (c *smtpConn) authXOAUTH2(user, token string) error {
	ir := base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
	c.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c.c, "AUTH XOAUTH2 "+ir+"\r\n"); err != nil {
		return err
	}
	code, text, err := c.reply()
	if err != nil {
		return err
	}
	if code == 334 {
		io.WriteString(c.c, "\r\n")
		code, text, err = c.reply()
		if err != nil {
			return err
		}
	}
	if code != 235 {
		return fmt.Errorf("AUTH XOAUTH2: %s", text)
	}
	return nil
}

// send relays one message: wire is its DATA, dot-stuffed and ending with
// the final ".\r\n". It returns the server's final reply.
func (c *smtpConn) send(from, to string, wire []byte) (string, error) {
	if _, err := c.cmd(250, "MAIL FROM:<"+from+">"); err != nil {
		return "", err
	}
	if _, err := c.cmd(250, "RCPT TO:<"+to+">"); err != nil {
		return "", err
	}
	if _, err := c.cmd(354, "DATA"); err != nil {
		return "", err
	}
	if _, err := c.c.Write(wire); err != nil {
		return "", err
	}
	text, err := c.expect(250)
	if err != nil {
		return text, fmt.Errorf("end of DATA: %v", err)
	}
	return text, nil
}

// quit says QUIT and waits for the 221.
func (c *smtpConn) quit() error {
	_, err := c.cmd(221, "QUIT")
	c.c.Close()
	return err
}
