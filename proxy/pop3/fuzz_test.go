package pop3

import (
	"bufio"
	"bytes"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

var fuzzSeeds = []string{
	"CAPA\r\nQUIT\r\n",
	"USER alice\r\nPASS pw\r\n",
	"USER unknown\r\nPASS x y z\r\nPASS\r\nUSER\r\n",
	"AUTH\r\nAUTH PLAIN\r\n" + "AGFsaWNlAHB3" + "\r\n",
	"AUTH PLAIN =\r\nAUTH PLAIN *\r\nAUTH LOGIN\r\n*\r\n",
	"AUTH LOGIN YWxpY2U=\r\ncHc=\r\nSTAT\r\n",
	"STLS\r\nAPOP a b\r\nRETR 1\r\nTOP 1 0\r\n",
	"USER a\x00b\r\nUSER a\rb\r\n\r\n \r\n",
	"NOOP " + strings.Repeat("x", 600) + "\r\nQUIT\r\n",
	"AUTH PLAIN " + strings.Repeat("A", 3000) + "\r\n",
	"\n\n\nquit\n",
}

// FuzzPOP3Parse reads arbitrary bytes as command lines: no panic, and
// every line returned is within its limit and free of NUL and CR.
func FuzzPOP3Parse(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), readBuffer)
		for {
			line, err := readLine(br, maxAuthLine)
			if err == errLineTooLong || err == errBadChars {
				continue
			}
			if err != nil {
				return
			}
			if len(line) > maxAuthLine || bytes.ContainsAny(line, "\x00\r\n") {
				t.Fatalf("line %q", line)
			}
			cmd := parseCommand(line)
			if cmd.name != strings.ToUpper(cmd.name) {
				t.Fatalf("name %q", cmd.name)
			}
		}
	})
}

// FuzzPOP3Session plays arbitrary client bytes against a session before
// login (logins with password "pw" go to an upstream that is down): it
// must end once the bytes do, and every reply line must end in CRLF and fit
// RFC 2449's 512 octets.
func FuzzPOP3Session(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	log := slog.New(slog.DiscardHandler)
	srv := NewServer(&Options{
		Upstream: dead, Logger: log,
		Auth:           &proxytest.Auth{Pass: "pw", Protocol: proxy.POP3},
		PreAuthTimeout: 5 * time.Second, DialTimeout: time.Second,
	})
	srv.probeOnce.Do(func() {}) // no probe of the dead upstream
	f.Fuzz(func(t *testing.T, data []byte) {
		conn := &scriptedConn{r: bytes.NewReader(data)}
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.handle(proxy.NewConn(conn))
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("session did not end")
		}
		out := conn.w.Bytes()
		if len(out) > 0 && !bytes.HasSuffix(out, []byte("\r\n")) {
			t.Fatalf("output does not end in CRLF: %q", out)
		}
		for _, l := range bytes.SplitAfter(out, []byte("\r\n")) {
			if len(l) > 512 || bytes.Count(l, []byte("\n")) > 1 {
				t.Fatalf("reply line %q", l)
			}
		}
	})
}

// scriptedConn is a client connection that sends a script, then EOF, and
// keeps what it is sent.
type scriptedConn struct {
	r *bytes.Reader
	w bytes.Buffer
}

func (c *scriptedConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *scriptedConn) Write(b []byte) (int, error) { return c.w.Write(b) }
func (c *scriptedConn) Close() error                { return nil }
func (c *scriptedConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 110}
}
func (c *scriptedConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *scriptedConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptedConn) SetWriteDeadline(time.Time) error { return nil }
