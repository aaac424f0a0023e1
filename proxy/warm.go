package proxy

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

const (
	// MaxWarmConnections bounds warm_connections.
	MaxWarmConnections = 16
	// DefaultWarmMaxAge is how long a parked connection waits for a login
	// before it is replaced: well below the pre-login timeouts of
	// upstreams (Exchange's PreAuthenticatedConnectionTimeout is 60 s by
	// default, Dovecot's login timeout 3 minutes).
	DefaultWarmMaxAge = 20 * time.Second
	// DefaultWarmIdle is how long a pool keeps replacing its connections
	// without a login: then it lets them go, and an idle broker holds
	// nothing open upstream.
	DefaultWarmIdle = 3 * time.Minute
	// warmRetryAfter pauses the background dials after one failed: the
	// logins meanwhile dial themselves, as without a pool.
	warmRetryAfter = 5 * time.Second
	// warmLogEvery rate-limits the warnings of failed background dials.
	warmLogEvery = time.Minute
)

// WarmOptions configures a WarmPool. Zero values are documented defaults.
type WarmOptions struct {
	// Size is the most connections parked: 0 disables the pool (Take
	// always returns nil and nothing is dialled).
	Size int
	// MaxAge is how long a connection stays parked before it is closed
	// and replaced: DefaultWarmMaxAge.
	MaxAge time.Duration
	// Idle is how long after the last Take the pool stops replacing its
	// connections: DefaultWarmIdle.
	Idle time.Duration
	// Dial opens one connection; ctx is cancelled by Close, and Dial
	// bounds its own time. Required unless Size is 0.
	Dial func(ctx context.Context) (*Greeted, error)
	// Logger receives the (rate-limited) failures of background dials.
	// Nil: slog.Default().
	Logger *slog.Logger
}

// WarmPool holds a few upstream connections that are connected and greeted
// but not logged in, so that a login needs only its authentication round
// trip. It dials only to replace a connection taken or aged out, or to grow
// after a Take found none, up to Size: every dial follows a successful
// local login (Take), or replaces a connection while logins keep coming
// (Idle). Connections are parked oldest first; a goroutine per parked
// connection notices upstream closing it.
type WarmPool struct {
	o      WarmOptions
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	target  int // connections wanted: grows with empty Takes, 0 once idle
	dialing int
	parked  []*parked
	// lastTake is the time of the last Take; retryAt pauses dials after a
	// failure; lastLog rate-limits the warnings.
	lastTake, retryAt, lastLog time.Time
}

// parked is one connection of the pool. claimed is set, under the pool's
// mutex, by whoever removes it: Take, its expiry, Close or its watcher.
type parked struct {
	g        *Greeted
	parkedAt time.Time
	expiry   *time.Timer
	claimed  bool
	// done is closed when the watcher's read returns, with its error.
	done chan struct{}
	err  error
}

// NewWarmPool returns an empty pool configured by o, which it copies.
func NewWarmPool(o *WarmOptions) *WarmPool {
	p := &WarmPool{o: *o, log: o.Logger}
	SetDefault(&p.o.MaxAge, DefaultWarmMaxAge)
	SetDefault(&p.o.Idle, DefaultWarmIdle)
	if p.log == nil {
		p.log = slog.Default()
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// Take returns a parked connection still open, or nil when there is none
// (then the caller dials). Call it only for a login whose local
// credentials were good: each call may start a dial that refills the pool.
func (p *WarmPool) Take() *Greeted {
	if p == nil || p.o.Size <= 0 {
		return nil
	}
	var g *Greeted
	for g == nil {
		w := p.claim()
		if w == nil {
			break
		}
		g = w.stopWatch()
	}
	p.refill()
	return g
}

// claim removes the oldest parked connection, or counts the demand for one
// more when there is none.
func (p *WarmPool) claim() *parked {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.lastTake = time.Now()
	if len(p.parked) == 0 {
		p.target = min(max(p.target+1, 1), p.o.Size)
		return nil
	}
	w := p.parked[0]
	p.parked = p.parked[1:]
	w.claimed = true
	w.expiry.Stop()
	if p.target == 0 {
		p.target = 1
	}
	return w
}

// stopWatch ends w's watcher and returns w's connection if it is still
// good: the watcher's read was interrupted, nothing arrived, and nothing
// waits in the socket (what arrived as the read was interrupted). Upstream
// sends nothing unasked before login but a farewell before closing.
func (w *parked) stopWatch() *Greeted {
	w.g.Conn.SetReadDeadline(longAgo)
	<-w.done
	w.g.Conn.SetReadDeadline(time.Time{})
	if !IsTimeout(w.err) || !socketQuiet(w.g.Conn.NetConn()) {
		w.g.Close()
		return nil
	}
	return w.g
}

// refill starts the dials that bring the pool to its target.
func (p *WarmPool) refill() {
	p.mu.Lock()
	n := 0
	if !p.closed && !time.Now().Before(p.retryAt) {
		n = p.target - len(p.parked) - p.dialing
	}
	if n > 0 {
		p.dialing += n
		p.wg.Add(n)
	}
	p.mu.Unlock()
	for range n {
		go p.dial()
	}
}

func (p *WarmPool) dial() {
	defer p.wg.Done()
	g, err := p.o.Dial(p.ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing--
	if err != nil {
		now := time.Now()
		p.retryAt = now.Add(warmRetryAfter)
		if !p.closed && now.Sub(p.lastLog) >= warmLogEvery {
			p.lastLog = now
			p.log.Warn("could not open a warm upstream connection; logins connect themselves meanwhile", "err", err.Error())
		}
		return
	}
	if p.closed || len(p.parked) >= p.target {
		g.Close()
		return
	}
	g.Conn.SetDeadline(time.Time{})
	w := &parked{g: g, parkedAt: time.Now(), done: make(chan struct{})}
	w.expiry = time.AfterFunc(p.o.MaxAge, func() { p.expire(w) })
	p.parked = append(p.parked, w)
	p.wg.Add(1)
	go p.watch(w)
}

// watch reads w until upstream closes it or says something (its farewell),
// or Take interrupts the read. A connection upstream ended is not replaced
// until the next Take: an upstream that ends them at once must not make
// the pool dial in a loop.
func (p *WarmPool) watch(w *parked) {
	defer p.wg.Done()
	_, w.err = w.g.Reader.Peek(1)
	close(w.done)
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.claimed {
		return
	}
	p.removeLocked(w)
	w.g.Close()
	if now := time.Now(); now.Sub(p.lastLog) >= warmLogEvery {
		p.lastLog = now
		p.log.Warn("upstream ended a warm connection before its time; logins may connect themselves",
			"age", now.Sub(w.parkedAt).Round(time.Millisecond), "max_age", p.o.MaxAge)
	}
}

// expire replaces w at its maximum age, unless no login came for Idle.
func (p *WarmPool) expire(w *parked) {
	p.mu.Lock()
	if w.claimed {
		p.mu.Unlock()
		return
	}
	p.removeLocked(w)
	if time.Since(p.lastTake) >= p.o.Idle {
		p.target = 0
	}
	p.mu.Unlock()
	w.g.Close()
	p.refill()
}

// removeLocked claims w and drops it from the parked ones; p.mu is held.
func (p *WarmPool) removeLocked(w *parked) {
	w.claimed = true
	w.expiry.Stop()
	for i, x := range p.parked {
		if x == w {
			p.parked = append(p.parked[:i], p.parked[i+1:]...)
			break
		}
	}
}

// Parked returns how many connections are parked now.
func (p *WarmPool) Parked() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}

// Close closes the parked connections, interrupts the dials under way and
// waits for them; the pool parks nothing more and Take returns nil.
func (p *WarmPool) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	ws := p.parked
	p.parked = nil
	for _, w := range ws {
		w.claimed = true
		w.expiry.Stop()
	}
	p.mu.Unlock()
	p.cancel()
	for _, w := range ws {
		w.g.Close()
	}
	p.wg.Wait()
}
