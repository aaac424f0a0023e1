package netem

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

const (
	delay = 15 * time.Millisecond
	// ioTimeout keeps a broken forwarder from hanging a test.
	ioTimeout = 10 * time.Second
)

// serve accepts connections on a loopback port and runs handle on each in
// its own goroutine until the test ends.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(ioTimeout))
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func forwarder(t *testing.T, target string, link Link) *Forwarder {
	t.Helper()
	f, err := Listen(target, link)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	return c.(*net.TCPConn)
}

func echo(c net.Conn) { io.Copy(c, c) }

// TestRoundTrip: the first exchange pays the TCP handshake and a round
// trip (2 RTT), later ones one round trip each, and the bytes arrive as
// sent.
func TestRoundTrip(t *testing.T) {
	f := forwarder(t, serve(t, echo), Link{Delay: delay})
	start := time.Now()
	c := dial(t, f.Addr())
	buf := make([]byte, 5)
	for i, want := range []time.Duration{4 * delay, 2 * delay, 2 * delay} {
		sent := time.Now()
		msg := []byte{'p', 'i', 'n', 'g', byte('0' + i)}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
		if !bytes.Equal(buf, msg) {
			t.Fatalf("exchange %d: got %q, want %q", i, buf, msg)
		}
		from := sent
		if i == 0 {
			from = start
		}
		if got := time.Since(from); got < want {
			t.Fatalf("exchange %d took %v, want at least %v", i, got, want)
		}
	}
}

// TestGreeting: a server that speaks first is heard two round trips after
// the client's connect, as over a real link.
func TestGreeting(t *testing.T) {
	addr := serve(t, func(c net.Conn) { c.Write([]byte("220 hello\r\n")) })
	f := forwarder(t, addr, Link{Delay: delay})
	start := time.Now()
	c := dial(t, f.Addr())
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "220 hello\r\n" {
		t.Fatalf("got %q, want the greeting and the end of the connection", got)
	}
	if elapsed := time.Since(start); elapsed < 4*delay {
		t.Fatalf("greeting after %v, want at least %v", elapsed, 4*delay)
	}
}

// TestRate: a bulk transfer takes at least its size over the rate, keeps
// its bytes, and the client's half-close reaches the server.
func TestRate(t *testing.T) {
	const (
		size = 2 << 20
		rate = 16 << 20
	)
	data := make([]byte, size)
	rand.Read(data)
	addr := serve(t, func(c net.Conn) {
		// Waits for the client's half-close before answering.
		if _, err := io.Copy(io.Discard, c); err != nil {
			return
		}
		c.Write(data)
	})
	f := forwarder(t, addr, Link{Delay: delay, Rate: rate})
	c := dial(t, f.Addr())
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want the %d sent, unchanged", len(got), len(data))
	}
	// The first read goes out at once; the rest waits for the rate.
	want := time.Duration(size-chunkSize) * time.Second / rate
	if elapsed := time.Since(start); elapsed < want {
		t.Fatalf("%d bytes at %d B/s took %v, want at least %v", size, rate, elapsed, want)
	}
}

// TestClose ends the connections in flight.
func TestClose(t *testing.T) {
	f, err := Listen(serve(t, echo), Link{Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, f.Addr())
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after Close: %d bytes, %v; want the connection closed", n, err)
	}
	if _, err := net.Dial("tcp", f.Addr()); err == nil {
		t.Fatal("dial after Close succeeded")
	}
}

func TestListenRefusesNegative(t *testing.T) {
	if _, err := Listen("127.0.0.1:1", Link{Delay: -time.Millisecond}); err == nil {
		t.Fatal("Listen with a negative delay succeeded")
	}
}
