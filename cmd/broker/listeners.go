package main

// The daemon owns its protocol listeners, not the proxies: each listener
// has an accept loop of the daemon's that hands connections to the
// protocol server of the moment through a feed. A reload that changes a
// protocol's options builds a new server and points the feeds at it, so
// that a listener whose address stays never stops accepting; the old
// server keeps its sessions until they end.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailbroker/broker/config"
)

// listenerKey names a configured listener: its protocol, whether it is
// implicit TLS, and its address as the configuration spells it.
type listenerKey struct {
	proto string
	tls   bool
	addr  string
}

// setting is the listener's configuration key, for messages.
func (k listenerKey) setting() string {
	if k.tls {
		return k.proto + ".listen_tls"
	}
	return k.proto + ".listen"
}

// boundListener is one listening socket and its accept loop.
type boundListener struct {
	// key is the setting the listener serves, under the daemon's
	// live.mu: a reload may rename it (port 0 written as the port got).
	key listenerKey
	// isTLS and desc are the key's, fixed: for the accept loop.
	isTLS bool
	desc  string
	l     net.Listener // the TCP listener, bound here or passed by systemd
	// activated: systemd passed the socket (LISTEN_FDS).
	activated bool
	// tlsConf is an implicit-TLS listener's local TLS, swapped by reloads.
	tlsConf atomic.Pointer[tls.Config]
	// feed hands connections to the current protocol server.
	feed atomic.Pointer[feed]

	closing atomic.Bool
	exited  chan struct{} // closed when the accept loop returns
}

func newBoundListener(key listenerKey, l net.Listener, localTLS *tls.Config, activated bool) *boundListener {
	bl := &boundListener{key: key, isTLS: key.tls, desc: key.setting() + " " + l.Addr().String(),
		l: l, activated: activated, exited: make(chan struct{})}
	bl.tlsConf.Store(localTLS)
	return bl
}

// serveWith points the listener at a protocol server's Serve: new
// connections go to it from now on. The previous server's feed is closed,
// which ends its Serve; its sessions go on.
func (bl *boundListener) serveWith(serve func(net.Listener) error) {
	f := newFeed(bl.l.Addr())
	go serve(f)
	if old := bl.feed.Swap(f); old != nil {
		old.Close()
	}
}

// close stops accepting; the accept loop then returns nil.
func (bl *boundListener) close() {
	bl.closing.Store(true)
	bl.l.Close()
	if f := bl.feed.Load(); f != nil {
		f.Close()
	}
}

// alive reports whether the accept loop runs or was stopped on purpose.
func (bl *boundListener) alive() bool {
	select {
	case <-bl.exited:
		return bl.closing.Load()
	default:
		return true
	}
}

const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// acceptLoop accepts until the listener is closed (nil) or fails for good.
// A temporary failure (EMFILE) is retried after a pause, as net/http does.
func (bl *boundListener) acceptLoop(d *daemon) error {
	defer close(bl.exited)
	var delay time.Duration
	for {
		c, err := bl.l.Accept()
		if err != nil {
			if bl.closing.Load() {
				return nil
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
				d.log.Warn("accept failed, retrying", "listener", bl.desc, "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("%s: %w", bl.desc, err)
		}
		delay = 0
		if bl.isTLS {
			c = tls.Server(c, bl.tlsConf.Load())
		}
		if !bl.deliver(c) {
			c.Close()
		}
	}
}

// deliver hands c to the current feed; it fails when the feed closed
// without a successor (the server stopped).
func (bl *boundListener) deliver(c net.Conn) bool {
	for {
		f := bl.feed.Load()
		if f == nil {
			return false
		}
		select {
		case f.ch <- c:
			return true
		case <-f.done:
			if bl.feed.Load() == f {
				return false
			}
			// A reload replaced it: try its successor.
		}
	}
}

// feed is a net.Listener whose connections the accept loop hands over.
type feed struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newFeed(addr net.Addr) *feed {
	return &feed{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (f *feed) Accept() (net.Conn, error) {
	select {
	case c := <-f.ch:
		return c, nil
	case <-f.done:
		return nil, net.ErrClosed
	}
}

func (f *feed) Close() error {
	f.once.Do(func() { close(f.done) })
	return nil
}

func (f *feed) Addr() net.Addr { return f.addr }

// listenerKeys are the listeners a protocol section asks for.
func listenerKeys(proto string, lc *config.Listener) []listenerKey {
	var keys []listenerKey
	for _, a := range lc.Listen {
		keys = append(keys, listenerKey{proto, false, a})
	}
	for _, a := range lc.ListenTLS {
		keys = append(keys, listenerKey{proto, true, a})
	}
	return keys
}

// openListener takes the socket systemd passed for key, or binds one.
func (d *daemon) openListener(key listenerKey, localTLS *tls.Config) (*boundListener, error) {
	if l := d.live.activation.take(key); l != nil {
		return newBoundListener(key, l, localTLS, true), nil
	}
	l, err := net.Listen("tcp", key.addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key.setting(), err)
	}
	return newBoundListener(key, l, localTLS, false), nil
}
