package main

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

func TestBoundListenerAliveAndFeeds(t *testing.T) {
	d := &daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	newBound := func() *boundListener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return newBoundListener(listenerKey{"imap", false, "127.0.0.1:0"}, l, nil, false)
	}

	// Connections go to the feed of the moment; a replaced feed's server
	// gets none after the swap.
	bl := newBound()
	first, second := make(chan net.Conn, 1), make(chan net.Conn, 1)
	serveInto := func(ch chan net.Conn) func(net.Listener) error {
		return func(l net.Listener) error {
			for {
				c, err := l.Accept()
				if err != nil {
					return err
				}
				ch <- c
			}
		}
	}
	bl.serveWith(serveInto(first))
	errc := make(chan error, 1)
	go func() { errc <- bl.acceptLoop(d) }()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", bl.l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	select {
	case c := <-first:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the first server got no connection")
	}
	bl.serveWith(serveInto(second))
	dial()
	select {
	case c := <-second:
		c.Close()
	case c := <-first:
		c.Close()
		t.Fatal("the replaced server got a connection")
	case <-time.After(5 * time.Second):
		t.Fatal("the second server got no connection")
	}
	if !bl.alive() {
		t.Fatal("not alive while accepting")
	}

	// Closed on purpose: alive, the loop returns nil.
	bl.close()
	if err := <-errc; err != nil {
		t.Fatalf("acceptLoop after close: %v", err)
	}
	if !bl.alive() {
		t.Fatal("a listener closed on purpose counts as dead")
	}

	// Failed: not alive, the loop returns the error.
	bl = newBound()
	go func() { errc <- bl.acceptLoop(d) }()
	bl.l.Close()
	if err := <-errc; err == nil {
		t.Fatal("acceptLoop returned nil after its listener failed")
	}
	if bl.alive() {
		t.Fatal("alive after the accept loop failed")
	}
}

func TestSameTCPAddr(t *testing.T) {
	a := func(s string) *net.TCPAddr {
		x, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	for _, c := range []struct {
		got, want string
		same      bool
	}{
		{"127.0.0.1:143", "127.0.0.1:143", true},
		{"127.0.0.1:143", "127.0.0.1:587", false},
		{"[::]:143", "0.0.0.0:143", true},
		{"[::]:143", ":143", true},
		{"127.0.0.1:143", "127.0.0.2:143", false},
	} {
		if got := sameTCPAddr(a(c.got), a(c.want)); got != c.same {
			t.Errorf("sameTCPAddr(%s, %s) = %v", c.got, c.want, got)
		}
	}
}
