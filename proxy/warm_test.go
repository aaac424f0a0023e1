package proxy_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// greeter is a TLS upstream that greets (unless silent) and then reads
// until the client closes; it reports each connection's accept and close,
// numbered from 1.
type greeter struct {
	addr     string
	cfg      *tls.Config
	accepted chan int
	closed   chan int
}

// greeter modes: greet and wait, stay silent, greet and hang up.
const (
	greet = iota
	silent
	hangUp
)

func startGreeter(t *testing.T, mode int) *greeter {
	t.Helper()
	cert := proxytest.MustCert(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert.Cert}})
	if err != nil {
		t.Fatal(err)
	}
	g := &greeter{addr: ln.Addr().String(), cfg: proxy.UpstreamTLSConfig(&tls.Config{RootCAs: cert.Pool}, ln.Addr().String()),
		accepted: make(chan int, 100), closed: make(chan int, 100)}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.accepted <- n
			go func() {
				defer func() { c.Close(); g.closed <- n }()
				if mode != silent {
					io.WriteString(c, "* OK hello\r\n")
				}
				if mode != hangUp {
					io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	return g
}

func (g *greeter) pool(o proxy.WarmOptions) *proxy.WarmPool {
	o.Dial = func(ctx context.Context) (*proxy.Greeted, error) {
		return proxy.DialGreeted(ctx, g.addr, g.cfg, 10*time.Second, 4096, func(c *proxy.Greeted) error {
			_, err := proxy.ReadUpstreamLine(c.Reader, 1000)
			return err
		})
	}
	return proxy.NewWarmPool(&o)
}

func next(t *testing.T, what string, ch chan int) int {
	t.Helper()
	select {
	case n := <-ch:
		return n
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return 0
	}
}

// TestWarmPoolMaxAge: a parked connection is closed at its maximum age and
// replaced while logins come, and not once they stopped for Idle.
func TestWarmPoolMaxAge(t *testing.T) {
	for _, tt := range []struct {
		name    string
		idle    time.Duration
		replace bool
	}{
		{"replaced", time.Hour, true},
		{"idle", time.Nanosecond, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := startGreeter(t, greet)
			p := g.pool(proxy.WarmOptions{Size: 2, MaxAge: 50 * time.Millisecond, Idle: tt.idle})
			defer p.Close()
			if c := p.Take(); c != nil {
				t.Fatal("an empty pool returned a connection")
			}
			first := next(t, "the first dial", g.accepted)
			if n := next(t, "the first connection to close", g.closed); n != first {
				t.Fatalf("connection %d closed, want %d", n, first)
			}
			if !tt.replace {
				proxytest.WaitFor(t, "the pool to empty", func() bool { return p.Parked() == 0 })
				select {
				case n := <-g.accepted:
					t.Fatalf("an idle pool dialled connection %d", n)
				default:
				}
				return
			}
			second := next(t, "the replacement", g.accepted)
			proxytest.WaitFor(t, "the replacement to park", func() bool { return p.Parked() == 1 })
			c := p.Take()
			if c == nil {
				t.Fatalf("Take returned nothing with connection %d parked", second)
			}
			c.Close()
		})
	}
}

// TestWarmPoolCloseInterruptsDial: Close does not wait for a greeting that
// never comes, and leaves nothing open.
func TestWarmPoolCloseInterruptsDial(t *testing.T) {
	g := startGreeter(t, silent)
	p := g.pool(proxy.WarmOptions{Size: 1})
	p.Take()
	n := next(t, "the dial", g.accepted)
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for the greeting")
	}
	if m := next(t, "the connection to close", g.closed); m != n {
		t.Fatalf("connection %d closed, want %d", m, n)
	}
	if c := p.Take(); c != nil {
		t.Fatal("a closed pool returned a connection")
	}
}

// TestWarmPoolUpstreamHangsUp: connections upstream ends are not replaced
// until the next Take, however fast upstream ends them.
func TestWarmPoolUpstreamHangsUp(t *testing.T) {
	g := startGreeter(t, hangUp)
	p := g.pool(proxy.WarmOptions{Size: 2})
	// The first Take finds none and wants one; the second, two.
	for take, dials := 1, 1; take <= 2; take, dials = take+1, dials+1 {
		if c := p.Take(); c != nil {
			t.Fatal("Take returned a connection upstream ended")
		}
		for range dials {
			next(t, "a dial", g.accepted)
			next(t, "upstream to hang up", g.closed)
		}
		proxytest.WaitFor(t, "the pool to drop them", func() bool { return p.Parked() == 0 && p.Dialing() == 0 })
	}
	p.Close()
	if n := len(g.accepted); n != 0 {
		t.Fatalf("%d more dials after the Takes, want none", n)
	}
}

// TestWarmPoolDisabled: a pool of size 0 dials nothing.
func TestWarmPoolDisabled(t *testing.T) {
	var p *proxy.WarmPool
	if p.Take() != nil || p.Parked() != 0 {
		t.Fatal("a nil pool holds connections")
	}
	p.Close()
	dials := 0
	p = proxy.NewWarmPool(&proxy.WarmOptions{Dial: func(context.Context) (*proxy.Greeted, error) {
		dials++
		return nil, net.ErrClosed
	}})
	for range 3 {
		if p.Take() != nil {
			t.Fatal("a pool of size 0 returned a connection")
		}
	}
	p.Close()
	if dials != 0 {
		t.Fatalf("a pool of size 0 dialled %d times", dials)
	}
}
