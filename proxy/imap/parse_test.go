package imap

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

func TestReadCommand(t *testing.T) {
	tests := []struct {
		in    string
		tag   string
		name  string
		args  []string
		conts int
		err   string // the syntax error's text
	}{
		{in: "a LOGIN alice pw\r\n", tag: "a", name: "LOGIN", args: []string{"alice", "pw"}},
		{in: "a1.x] login ALI]CE p$w\n", tag: "a1.x]", name: "LOGIN", args: []string{"ALI]CE", "p$w"}},
		{in: `t LOGIN "al\"i\\ce" "p w"` + "\r\n", tag: "t", name: "LOGIN", args: []string{`al"i\ce`, "p w"}},
		{in: `t LOGIN "" "é"` + "\r\n", tag: "t", name: "LOGIN", args: []string{"", "é"}},
		{in: "a LOGIN {5}\r\nalice {2+}\r\npw\r\n", tag: "a", name: "LOGIN", args: []string{"alice", "pw"}, conts: 1},
		{in: "a LOGIN {0}\r\n {1}\r\n\x00\r\n", tag: "a", name: "LOGIN", args: []string{"", "\x00"}, conts: 2},
		{in: "a AUTHENTICATE PLAIN =\r\n", tag: "a", name: "AUTHENTICATE", args: []string{"PLAIN", "="}},
		{in: "a AUTHENTICATE xoauth2\r\n", tag: "a", name: "AUTHENTICATE", args: []string{"xoauth2"}},
		{in: "a ID NIL\r\n", tag: "a", name: "ID"},
		{in: `a ID ("a" nil "b" {1}` + "\r\nc)\r\n", tag: "a", name: "ID", conts: 1},
		{in: "a NOOP\r\n", tag: "a", name: "NOOP"},
		{in: "a SELECT {3}\r\n", tag: "a", name: "SELECT"},
		{in: "a SELECT {3+}\r\nabc {2+}\r\nde\r\n", tag: "a", name: "SELECT"},
		{in: "\r\n", err: "Invalid tag"},
		{in: "* NOOP\r\n", err: "Invalid tag"},
		{in: "a+ NOOP\r\n", err: "Missing command"},
		{in: "a NOOP x\r\n", err: "Syntax error"},
		{in: "a LOGIN a\r\n", err: "Syntax error"},
		{in: "a LOGIN a  b\r\n", err: "Syntax error"},
		{in: "a LOGIN a \"b\r\n", err: "Syntax error"},
		{in: "a LOGIN a \"b\\x\"\r\n", err: "Syntax error"},
		{in: "a LOGIN a {2}x\r\n", err: "Syntax error"},
		{in: "a LOGIN a {}\r\n", err: "Syntax error"},
		{in: "a LOGIN a {4097}\r\n", err: "Literal too large"},
		{in: "a ID (\"a\" \"b\"\r\n", err: "Syntax error"},
		{in: "a AUTHENTICATE\r\n", err: "Syntax error"},
		{in: "a AUTHENTICATE PLAIN a b\r\n", err: "Syntax error"},
	}
	for _, tt := range tests {
		conts := 0
		r := newCommandReader(strings.NewReader(tt.in), func() error { conts++; return nil })
		cmd, err := r.readCommand()
		if tt.err != "" {
			var se *syntaxError
			if !errors.As(err, &se) || se.text != tt.err || se.fatal {
				t.Errorf("%q: got %v, want non-fatal %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		var args []string
		for _, a := range cmd.args {
			args = append(args, string(a))
		}
		if cmd.tag != tt.tag || cmd.name != tt.name || strings.Join(args, "|") != strings.Join(tt.args, "|") || conts != tt.conts {
			t.Errorf("%q: got %q %q %q with %d continuations, want %q %q %q with %d",
				tt.in, cmd.tag, cmd.name, args, conts, tt.tag, tt.name, tt.args, tt.conts)
		}
		if _, err := r.readCommand(); err != io.EOF {
			t.Errorf("%q: after the command: got %v, want EOF", tt.in, err)
		}
	}
}

func TestTrailingLiteral(t *testing.T) {
	tests := []struct {
		in   string
		n    int64
		sync bool
		ok   bool
	}{
		{"{0}", 0, true, true},
		{"x {12+}", 12, false, true},
		{"{99999999999999999999}", maxCommand + 1, true, true},
		{"{+}", 0, false, false},
		{"{}", 0, false, false},
		{"12}", 0, false, false},
		{"{1x}", 0, false, false},
		{"", 0, false, false},
		{"}", 0, false, false},
	}
	for _, tt := range tests {
		n, sync, ok := trailingLiteral([]byte(tt.in))
		if n != tt.n || sync != tt.sync || ok != tt.ok {
			t.Errorf("trailingLiteral(%q) = %d, %v, %v; want %d, %v, %v", tt.in, n, sync, ok, tt.n, tt.sync, tt.ok)
		}
	}
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		"a LOGIN alice pw\r\n",
		"a LOGIN {5}\r\nalice {2+}\r\npw\r\n",
		`a ID ("name" {3+}` + "\r\nacd)\r\n",
		"a AUTHENTICATE PLAIN\r\nAGFsaWNlAHB3\r\n",
		"a SELECT {3+}\r\nabc {99999+}\r\n",
		"a LOGIN \"a\\\"b\" c\r\nb NOOP\n",
		"a AUTHENTICATE LOGIN YWxpY2U=\r\ncHc=\r\n",
		"a ENABLE CONDSTORE {3+}\r\nabc\r\n",
	} {
		f.Add([]byte(s))
	}
	// Lines past the reader's buffer, up to and beyond the limit.
	f.Add([]byte("a ID (" + strings.Repeat(`"name" "`+strings.Repeat("y", 1000)+`" `, 30) + "\"x\" NIL)\r\nb NOOP\r\n"))
	f.Add([]byte("a ID (\"x\" \"" + strings.Repeat("z", maxLine) + "\")\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newCommandReader(bytes.NewReader(data), func() error { return nil })
		for i := 0; ; i++ {
			if i > len(data) {
				t.Fatalf("%d commands from %d bytes: no progress", i, len(data))
			}
			cmd, err := r.readCommand()
			if err != nil {
				var se *syntaxError
				if errors.As(err, &se) && !se.fatal {
					continue
				}
				return
			}
			if cmd.tag == "" || cmd.name != strings.ToUpper(cmd.name) {
				t.Fatalf("bad command %+v", cmd)
			}
			for _, a := range cmd.args {
				if len(a) > maxLine {
					t.Fatalf("argument of %d bytes", len(a))
				}
			}
			switch {
			case cmd.name == "LOGIN" && len(cmd.args) != 2,
				cmd.name == "AUTHENTICATE" && len(cmd.args) != 1 && len(cmd.args) != 2:
				t.Fatalf("%s with %d arguments", cmd.name, len(cmd.args))
			case cmd.name == "AUTHENTICATE" && len(cmd.args) == 1:
				if _, err := r.readResponseLine(); err != nil {
					return
				}
			}
		}
	})
}

// FuzzIMAPSession feeds bytes to a whole pre-login session over a pipe: it
// must end, without panicking, once the input ends.
func FuzzIMAPSession(f *testing.F) {
	for _, s := range []string{
		"a CAPABILITY\r\nb ID NIL\r\nc LOGIN alice pw\r\nd LOGOUT\r\n",
		"a LOGIN {5}\r\nalice {2}\r\npw\r\n",
		"a AUTHENTICATE PLAIN\r\n*\r\nb AUTHENTICATE PLAIN\r\nAGFsaWNlAHB3\r\n",
		"a STARTTLS\r\n\x16\x03\x01\x00\x05hello",
		"a LOGIN x y\r\nb LOGIN x y\r\nc LOGIN x y\r\nd NOOP\r\n",
		"a SELECT {9999+}\r\n",
		"a AUTHENTICATE LOGIN\r\nYWxpY2U=\r\ncHc=\r\nb AUTHENTICATE LOGIN YWxpY2U=\r\n*\r\n",
		"a AUTHENTICATE LOGIN =\r\nb AUTHENTICATE PLAIN\r\n\r\nc AUTHENTICATE PLAIN Ym9iAGFsaWNlAHB3\r\n",
		"a ENABLE UTF8=ACCEPT\r\nb ENABLE\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Add([]byte("a ID (" + strings.Repeat(`"name" "`+strings.Repeat("y", 1000)+`" `, 30) + "\"x\" NIL)\r\nb LOGIN alice pw\r\n"))
	cert := proxytest.MustCert(f)
	srv := NewServer(&Options{
		Upstream:       "127.0.0.1:1",
		Auth:           &proxytest.Auth{Pass: "pw", Err: &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: "fuzzing"}},
		TLS:            &tls.Config{Certificates: []tls.Certificate{cert.Cert}},
		Logger:         slog.New(slog.DiscardHandler),
		PreAuthTimeout: 5 * time.Second,
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		defer client.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer server.Close()
			newSession(srv, proxy.NewConn(server)).run()
		}()
		go io.Copy(io.Discard, client)
		client.Write(data)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end")
		}
	})
}
