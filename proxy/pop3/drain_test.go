package pop3

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

func TestPOP3Tracker(t *testing.T) {
	type step struct {
		client, upstream string
		quiet            bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"idle", []step{{quiet: true}}},
		{"single line", []step{
			{client: "STAT\r\n", quiet: false},
			{upstream: "+OK 2 320\r\n", quiet: true},
		}},
		{"partial command", []step{
			{client: "DEL", quiet: false},
			{client: "E 1\r\n", quiet: false},
			{upstream: "+OK\r\n", quiet: true},
		}},
		{"RETR in pieces, dot-stuffed", []step{
			{client: "RETR 1\r\n"},
			{upstream: "+OK 20 octets\r\nSubject: x\r\n\r\n"},
			{upstream: "..\r\n.dotted\r\n"},
			{upstream: strings.Repeat("a", 200) + "\r\n."},
			{upstream: "\r", quiet: false},
			{upstream: "\n", quiet: true},
		}},
		{"RETR refused", []step{
			{client: "RETR 9\r\n"},
			{upstream: "-ERR no such message\r\n", quiet: true},
		}},
		{"LIST and UIDL with and without argument, pipelined", []step{
			{client: "LIST\r\nLIST 1\r\nUIDL 1\r\nUIDL\r\nTOP 1 0\r\nCAPA\r\n"},
			{upstream: "+OK\r\n1 10\r\n.\r\n"},
			{upstream: "+OK 1 10\r\n"},
			{upstream: "+OK 1 u1\r\n"},
			{upstream: "+OK\r\n1 u1\r\n.\r\n"},
			{upstream: "+OK\r\nSubject: x\r\n\r\n.\r\n"},
			{upstream: "+OK\r\nTOP\r\n", quiet: false},
			{upstream: ".\r\n", quiet: true},
		}},
		{"unsolicited line", []step{{upstream: "-ERR autologout\r\n", quiet: true}}},
		{"SASL after login", []step{
			{client: "AUTH PLAIN\r\n"},
			{upstream: "+ \r\n", quiet: false},
			{client: "AGFsaWNlAHB3\r\n"},
			{upstream: "-ERR\r\n", quiet: false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &tracker{}
			for i, st := range tc.steps {
				tr.Client([]byte(st.client))
				tr.Upstream([]byte(st.upstream))
				if got := tr.Quiet(); got != st.quiet {
					t.Fatalf("step %d (%q, %q): quiet %v, want %v", i, st.client, st.upstream, got, st.quiet)
				}
			}
		})
	}
	t.Run("too many in flight", func(t *testing.T) {
		tr := &tracker{}
		tr.Client([]byte(strings.Repeat("NOOP\r\n", maxInflight+1)))
		tr.Upstream([]byte(strings.Repeat("+OK\r\n", maxInflight+1)))
		if tr.Quiet() {
			t.Fatal("quiet after too many commands in flight")
		}
	})
}

func TestPOP3Shutdown(t *testing.T) {
	login := func(t *testing.T, addr string) *proxytest.Client {
		c := dial(t, addr)
		c.Send("USER alice@example.com\r\nPASS pw\r\n")
		c.Expect("+OK")
		c.Expect("+OK Logged in")
		return c
	}
	t.Run("idle sessions end at once, deletions not applied", func(t *testing.T) {
		up := startStub(t, defaultStub())
		srv, addr, logs := startProxy(t, Options{}, up)
		c := login(t, addr)
		c.Send("DELE 1\r\n")
		c.Expect("+OK")
		preauth := dial(t, addr)
		auth := dial(t, addr)
		auth.Send("AUTH PLAIN\r\n")
		auth.Expect("+ ")
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(context.Background()) }()
		// Logged in: closed between commands, without a word.
		c.ExpectClosed()
		c.Conn.Close()
		// Not logged in: -ERR [SYS/TEMP] at once, in an AUTH exchange too.
		for _, cl := range []*proxytest.Client{preauth, auth} {
			cl.Expect("-ERR [SYS/TEMP] Server shutting down")
			cl.ExpectClosed()
			cl.Conn.Close()
		}
		if err := <-done; err != nil {
			t.Fatalf("Shutdown: got %v, want nil", err)
		}
		if got := up.Deleted("alice@example.com"); len(got) != 0 {
			t.Fatalf("deleted %v: a drained session must not QUIT upstream", got)
		}
		if !strings.Contains(logs.String(), "drained") {
			t.Fatalf("no drained session in the log:\n%s", logs)
		}
	})
	t.Run("a RETR in flight finishes first", func(t *testing.T) {
		cfg := defaultStub()
		cfg.retrHalted, cfg.retrGo = make(chan struct{}), make(chan struct{})
		body := "Subject: big\r\n\r\n" + strings.Repeat("line of the message\r\n", 2000)
		cfg.messages["alice@example.com"] = []string{body}
		up := startStub(t, cfg)
		srv, addr, _ := startProxy(t, Options{}, up)
		c := login(t, addr)
		c.Send("RETR 1\r\n")
		<-cfg.retrHalted
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(context.Background()) }()
		time.Sleep(100 * time.Millisecond)
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v with a RETR in flight", err)
		default:
		}
		close(cfg.retrGo)
		c.Expect("+OK")
		got := strings.Join(multi(c), "\r\n") + "\r\n"
		if got != body {
			t.Fatalf("RETR: got %d bytes, want %d intact", len(got), len(body))
		}
		c.ExpectClosed()
		c.Conn.Close()
		if err := <-done; err != nil {
			t.Fatalf("Shutdown: got %v, want nil", err)
		}
	})
	t.Run("a command sent after a quiet point is not relayed", func(t *testing.T) {
		up := startStub(t, defaultStub())
		srv, addr, _ := startProxy(t, Options{}, up)
		c := login(t, addr)
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		c.Conn.Write([]byte("DELE 1\r\nQUIT\r\n"))
		c.ExpectClosed()
		c.Conn.Close()
		time.Sleep(50 * time.Millisecond)
		for _, l := range up.Lines() {
			if l == "DELE 1" {
				t.Fatalf("upstream got %q after the drain", l)
			}
		}
		if got := up.Deleted("alice@example.com"); len(got) != 0 {
			t.Fatalf("deleted %v after the drain", got)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		cfg := defaultStub()
		cfg.retrHalted, cfg.retrGo = make(chan struct{}), make(chan struct{})
		up := startStub(t, cfg)
		srv, addr, _ := startProxy(t, Options{}, up)
		c := login(t, addr)
		c.Send("RETR 1\r\n")
		<-cfg.retrHalted
		defer close(cfg.retrGo)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: got %v, want DeadlineExceeded", err)
		}
		proxytest.WaitFor(t, "sessions closed", func() bool { return srv.Sessions() == 0 })
	})
}
