package imap

import (
	"errors"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/mailbroker/broker/proxy/internal/proxytest"
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
	serveProxy(t, Options{Auth: &proxytest.Auth{}, Upstream: "127.0.0.1:1"}, nil, fl)
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
	srv := NewServer(&Options{Auth: &proxytest.Auth{}, Upstream: "127.0.0.1:1"})
	if err := srv.Serve(fl); !errors.Is(err, errBroken) {
		t.Fatalf("Serve: got %v, want %v", err, errBroken)
	}
}

// TestIMAPNoGoroutineLeak runs sessions that end in every way and checks
// that their goroutines are gone.
func TestIMAPNoGoroutineLeak(t *testing.T) {
	up := startStub(t, defaultStub())
	srv, addr := startProxy(t, Options{Auth: &proxytest.Auth{Pass: "pw"}}, up)
	before := runtime.NumGoroutine()

	scripts := []func(c *testClient){
		func(c *testClient) { // LOGOUT: upstream closes
			c.login("alice", "pw")
			c.Send("b LOGOUT\r\n")
			c.Expect("* BYE")
			c.Expect("b OK")
			c.ExpectClosed()
		},
		func(c *testClient) { // client closes a spliced session
			c.login("alice", "pw")
			c.Send("b IDLE\r\n")
			c.Expect("+ idling")
			c.Conn.Close()
		},
		func(c *testClient) { // client closes in the middle of a download
			c.login("alice", "pw")
			c.Send("b FETCH 10000000\r\n")
			c.Expect("* 1 FETCH")
			c.Conn.Close()
		},
		func(c *testClient) { // pre-login failures
			c.greet()
			for _, tag := range []string{"a", "b", "c"} {
				c.Send(tag + " LOGIN alice nope\r\n")
				c.Expect(tag + " NO")
			}
			c.Expect("* BYE")
			c.ExpectClosed()
		},
		func(c *testClient) { // garbage then close
			c.greet()
			c.Send("\x00\x01\r\nfoo\r\n")
			c.Expect("* BAD")
			c.Conn.Close()
		},
	}
	for range 3 {
		for _, script := range scripts {
			script(dialClient(t, addr))
		}
	}
	proxytest.WaitFor(t, "sessions to end", func() bool { return srv.Sessions() == 0 })
	proxytest.WaitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
