package test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// rawTimeout bounds each raw exchange; a hang fails the test.
const rawTimeout = 20 * time.Second

// rawSession sends lines and returns every response line up to and
// including the first line starting with until (or the connection's end).
func rawSession(t *testing.T, addr string, send string, until ...string) []string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(rawTimeout))
	r := bufio.NewReader(conn)
	if greeting, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(greeting, "* OK") {
		t.Fatalf("greeting: got %q, %v", greeting, err)
	}
	// The proxy may hang up before reading everything (an overlong line):
	// what counts is what it answered.
	go conn.Write([]byte(send))
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			lines = append(lines, strings.TrimRight(line, "\r\n"))
		}
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("no answer within %v; got %q", rawTimeout, lines)
			}
			return lines
		}
		for _, u := range until {
			if strings.HasPrefix(line, u) {
				return lines
			}
		}
	}
}

func TestMalformedInput(t *testing.T) {
	env := newSimEnv(t)
	addr := env.Daemon.IMAPAddr
	tests := []struct {
		name  string
		send  string
		until []string
		want  string
	}{
		{"garbage", "\x00\xff\xfe garbage\r\n", []string{"* BAD", "* BYE"}, "BAD"},
		{"no command", "a1\r\n", []string{"a1 "}, "a1 BAD"},
		{"unknown command", "a1 FROB\r\n", []string{"a1 "}, "a1 BAD"},
		{"select before login", "a1 SELECT INBOX\r\n", []string{"a1 "}, "a1 BAD"},
		{"overlong line", "a1 LOGIN " + strings.Repeat("x", 1<<20) + "\r\n", []string{"* BYE"}, "BYE"},
		{"huge literal", "a1 LOGIN {999999999}\r\n", []string{"a1 ", "* BYE"}, "BAD"},
		{"huge non-sync literal", "a1 LOGIN {999999999+}\r\n", []string{"a1 ", "* BYE"}, "BAD"},
		{"bad base64", "a1 AUTHENTICATE PLAIN !!!notbase64!!!\r\n", []string{"a1 "}, "a1 BAD"},
		{"bad base64 continuation", "a1 AUTHENTICATE PLAIN\r\n%%%\r\n", []string{"a1 "}, "a1 BAD"},
		{"cancelled authenticate", "a1 AUTHENTICATE PLAIN\r\n*\r\n", []string{"a1 "}, "a1 BAD"},
		{"unsupported mechanism", "a1 AUTHENTICATE CRAM-MD5\r\n", []string{"a1 "}, "a1 NO"},
		{"unterminated quote", "a1 LOGIN \"user pass\r\n", []string{"a1 "}, "a1 BAD"},
		{"bare LF", "a1 NOOP\na2 NOOP\n", []string{"a2 "}, "a2 OK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := rawSession(t, addr, tt.send, tt.until...)
			if !containsLine(lines, tt.want) {
				t.Fatalf("sent %.60q: got %q, want a line with %q", tt.send, lines, tt.want)
			}
		})
	}
	// The daemon survived all of it.
	c := dialProxy(t, addr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("LOGIN after malformed input: %v\n%s", err, env.Daemon.Log())
	}
	if log := env.Daemon.Log(); strings.Contains(log, "panic") {
		t.Fatalf("daemon log mentions a panic:\n%s", log)
	}
}

func TestTooManyFailedLoginsEndsSession(t *testing.T) {
	env := newSimEnv(t)
	send := strings.Repeat("a LOGIN "+mailbox+" wrongwrongwrongwrongwrongwrong12\r\n", 5)
	lines := rawSession(t, env.Daemon.IMAPAddr, send, "* BYE")
	if !containsLine(lines, "* BYE") {
		t.Fatalf("after repeated failures: got %q, want * BYE", lines)
	}
}

func containsLine(lines []string, substr string) bool {
	for _, l := range lines {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}
