//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package proxy_test

import (
	"io"
	"net"
	"testing"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// TestSocketQuiet: the check of a warm connection at its take tells an
// idle socket from one with bytes waiting or at its end, and consumes
// nothing.
func TestSocketQuiet(t *testing.T) {
	pair := func() (client, server net.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		client, err = net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err = ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close(); server.Close() })
		return client, server
	}
	c, s := pair()
	if !proxy.SocketQuiet(c) {
		t.Fatal("an idle socket is not quiet")
	}
	s.Write([]byte("* BYE"))
	proxytest.WaitFor(t, "the bytes to be seen", func() bool { return !proxy.SocketQuiet(c) })
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "* BYE" {
		t.Fatalf("read %q, %v after the check, want the bytes it saw", b, err)
	}
	if !proxy.SocketQuiet(c) {
		t.Fatal("a socket read to its end is not quiet")
	}
	c, s = pair()
	s.Close()
	proxytest.WaitFor(t, "the end to be seen", func() bool { return !proxy.SocketQuiet(c) })
}
