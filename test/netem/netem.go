// Package netem forwards TCP connections as a wide-area link would carry
// them: every byte arrives a fixed delay after it was sent, in each
// direction, optionally no faster than a rate. A bulk transfer is shifted
// in time, not made stop-and-wait: bytes keep flowing while earlier ones
// are still on the way, up to a bounded queue.
package netem

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Link describes the emulated path, the same in both directions.
type Link struct {
	// Delay is added to every byte each way; the round trip grows by twice
	// this. A connection also takes the time of a TCP handshake over the
	// link: the target is dialled 1.5 round trips after the client's
	// connect, as a server would accept it. 0: no delay.
	Delay time.Duration
	// Rate caps each direction, in bytes per second. 0: no cap.
	Rate int64
	// Queue bounds the bytes a direction holds (in flight and waiting for
	// the rate); a full queue stops reading, and TCP pushes back on the
	// sender. 0: twice the bytes the rate puts in flight during Delay, at
	// least minQueue, or defaultQueue without a rate.
	Queue int
}

const (
	// chunkSize is the largest read forwarded as one piece.
	chunkSize = 64 << 10
	// minQueue keeps a slow link's queue able to hold a few reads.
	minQueue = 1 << 20
	// defaultQueue holds what a loopback sender puts in flight during a
	// few tens of milliseconds.
	defaultQueue = 64 << 20
	// dialTimeout bounds the connection to the target.
	dialTimeout = 10 * time.Second
)

func (l Link) queue() int {
	switch {
	case l.Queue > 0:
		return l.Queue
	case l.Rate > 0:
		return max(int(2*l.Rate*int64(l.Delay)/int64(time.Second)), minQueue)
	}
	return defaultQueue
}

// Forwarder accepts connections on a loopback port and forwards each to
// its target over the emulated link.
type Forwarder struct {
	ln     net.Listener
	target string
	link   Link
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

// Listen starts a forwarder on 127.0.0.1 to target.
func Listen(target string, link Link) (*Forwarder, error) {
	if link.Delay < 0 || link.Rate < 0 || link.Queue < 0 {
		return nil, errors.New("netem: negative delay, rate or queue")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &Forwarder{ln: ln, target: target, link: link, conns: make(map[net.Conn]struct{})}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Addr is the address to dial instead of the target.
func (f *Forwarder) Addr() string { return f.ln.Addr().String() }

// Close stops accepting, closes every forwarded connection and waits for
// their goroutines.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	err := f.ln.Close()
	f.wg.Wait()
	return err
}

// track registers c for Close; false when the forwarder is closed.
func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go f.forward(c, time.Now())
	}
}

// forward carries one connection accepted at start.
func (f *Forwarder) forward(c net.Conn, start time.Time) {
	defer f.wg.Done()
	defer f.untrack(c)
	defer c.Close()
	up := newPipe(f.link)
	down := newPipe(f.link)
	var wg sync.WaitGroup
	wg.Go(func() { up.read(c) })
	// The client's SYN, the server's SYN-ACK and the client's ACK: the
	// server accepts 1.5 round trips after the client connected.
	time.Sleep(time.Until(start.Add(3 * f.link.Delay))) // pacing, not synchronisation
	u, err := net.DialTimeout("tcp", f.target, dialTimeout)
	if err == nil && !f.track(u) {
		u.Close()
		err = net.ErrClosed
	}
	if err != nil {
		c.Close()
		up.abort()
		wg.Wait()
		return
	}
	defer f.untrack(u)
	defer u.Close()
	wg.Go(func() { down.read(u) })
	// Either writer failing ends the whole connection: both sides are
	// closed, which ends both readers.
	fail := func() {
		c.Close()
		u.Close()
		up.abort()
		down.abort()
	}
	wg.Go(func() {
		if !up.write(u) {
			fail()
		}
	})
	if !down.write(c) {
		fail()
	}
	wg.Wait()
}

// chunk is one read, due at the other end at due; eof marks the end of
// the direction.
type chunk struct {
	data []byte
	due  time.Time
	eof  bool
}

var chunkPool = sync.Pool{New: func() any { return new([chunkSize]byte) }}

// pipe is one direction of a connection: a reader queues what it reads
// with the time it is due, a writer delivers it then.
type pipe struct {
	link  Link
	limit int

	mu      sync.Mutex
	cond    *sync.Cond
	q       []chunk
	queued  int
	aborted bool
}

func newPipe(link Link) *pipe {
	p := &pipe{link: link, limit: link.queue()}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *pipe) abort() {
	p.mu.Lock()
	p.aborted = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// read queues what src sends until it ends, then an end marker.
func (p *pipe) read(src net.Conn) {
	for {
		buf := chunkPool.Get().(*[chunkSize]byte)
		n, err := src.Read(buf[:])
		now := time.Now()
		if n > 0 && !p.push(chunk{data: buf[:n], due: now.Add(p.link.Delay)}) {
			return
		}
		if n == 0 {
			chunkPool.Put(buf)
		}
		if err != nil {
			p.push(chunk{due: now.Add(p.link.Delay), eof: true})
			return
		}
	}
}

// push waits for room in the queue; false when the pipe was aborted.
func (p *pipe) push(c chunk) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !c.eof && p.queued >= p.limit && !p.aborted {
		p.cond.Wait()
	}
	if p.aborted {
		return false
	}
	p.q = append(p.q, c)
	p.queued += len(c.data)
	p.cond.Broadcast()
	return true
}

// pop waits for the next chunk; false when the pipe was aborted.
func (p *pipe) pop() (chunk, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.q) == 0 && !p.aborted {
		p.cond.Wait()
	}
	if p.aborted {
		return chunk{}, false
	}
	c := p.q[0]
	p.q[0] = chunk{}
	p.q = p.q[1:]
	return c, true
}

func (p *pipe) release(n int) {
	p.mu.Lock()
	p.queued -= n
	p.cond.Broadcast()
	p.mu.Unlock()
}

// write delivers each chunk to dst when it is due and the rate allows,
// and half-closes dst at the end. It reports false when dst failed.
func (p *pipe) write(dst net.Conn) bool {
	var free time.Time // when the rate next allows a byte out
	for {
		c, ok := p.pop()
		if !ok {
			return true
		}
		at := c.due
		if p.link.Rate > 0 && free.After(at) {
			at = free
		}
		if wait := time.Until(at); wait > 0 {
			time.Sleep(wait) // pacing, not synchronisation
		}
		if c.eof {
			if tc, ok := dst.(interface{ CloseWrite() error }); ok {
				tc.CloseWrite()
			}
			return true
		}
		_, err := dst.Write(c.data)
		if p.link.Rate > 0 {
			free = at.Add(time.Duration(int64(len(c.data)) * int64(time.Second) / p.link.Rate))
		}
		p.release(len(c.data))
		chunkPool.Put((*[chunkSize]byte)(c.data[:chunkSize]))
		if err != nil {
			return false
		}
	}
}
