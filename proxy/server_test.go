package proxy

import (
	"errors"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// flakyListener fails its first Accepts with err.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
	err   error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

func TestServeTemporaryAcceptError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln, err: &net.OpError{Op: "accept", Err: syscall.EMFILE}}
	fl.fails.Store(3)
	serveProxy(t, IMAPOptions{Auth: &stubAuth{}, Upstream: "127.0.0.1:1"}, nil, fl)
	c := dialClient(t, ln.Addr().String())
	c.greet()
}

func TestServePermanentAcceptError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errBroken := errors.New("broken listener")
	fl := &flakyListener{Listener: ln, err: errBroken}
	fl.fails.Store(1)
	srv := NewIMAPServer(&IMAPOptions{Auth: &stubAuth{}, Upstream: "127.0.0.1:1"})
	if err := srv.Serve(fl); !errors.Is(err, errBroken) {
		t.Fatalf("Serve: got %v, want %v", err, errBroken)
	}
}

func TestSessionIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := newSessionID()
		if len(id) != 8 || strings.Trim(id, "0123456789abcdef") != "" || seen[id] {
			t.Fatalf("bad or repeated session id %q", id)
		}
		seen[id] = true
	}
}

// TestIMAPNoGoroutineLeak runs sessions that end in every way and checks
// that their goroutines are gone.
func TestIMAPNoGoroutineLeak(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr := startProxy(t, IMAPOptions{Auth: &stubAuth{pass: "pw"}}, up)
	before := runtime.NumGoroutine()

	scripts := []func(c *testClient){
		func(c *testClient) { // LOGOUT: upstream closes
			c.login("alice", "pw")
			c.send("b LOGOUT\r\n")
			c.expect("* BYE")
			c.expect("b OK")
			c.expectClosed()
		},
		func(c *testClient) { // client closes a spliced session
			c.login("alice", "pw")
			c.send("b IDLE\r\n")
			c.expect("+ idling")
			c.c.Close()
		},
		func(c *testClient) { // client closes in the middle of a download
			c.login("alice", "pw")
			c.send("b FETCH 10000000\r\n")
			c.expect("* 1 FETCH")
			c.c.Close()
		},
		func(c *testClient) { // pre-login failures
			c.greet()
			for _, tag := range []string{"a", "b", "c"} {
				c.send(tag + " LOGIN alice nope\r\n")
				c.expect(tag + " NO")
			}
			c.expect("* BYE")
			c.expectClosed()
		},
		func(c *testClient) { // garbage then close
			c.greet()
			c.send("\x00\x01\r\nfoo\r\n")
			c.expect("* BAD")
			c.c.Close()
		},
	}
	for range 3 {
		for _, script := range scripts {
			script(dialClient(t, addr))
		}
	}
	waitFor(t, "sessions to end", func() bool { return srv.Sessions() == 0 })
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
