package smtp

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
)

const (
	// DefaultReuseIdleTimeout is how long an authenticated upstream
	// connection of the SMTP relay waits, after its session ended, for the
	// next session of its mailbox: well below the idle timeouts of
	// upstreams (Postfix's smtpd_timeout is 5 minutes), so that a kept
	// connection is rarely found closed.
	DefaultReuseIdleTimeout = 30 * time.Second
	// maxKeptPerMailbox and maxKept bound the connections kept for reuse,
	// per mailbox and in all. A kept connection holds its mailbox's slot.
	maxKeptPerMailbox = 2
	maxKept           = 64
	// tokenMargin: a connection is neither kept nor reused within this
	// of its token's expiry.
	tokenMargin = time.Minute
	// unknownTokenLifetime is the lifetime assumed of a token whose
	// expiry the Authenticator did not say: Entra's access tokens live 60
	// to 90 minutes.
	unknownTokenLifetime = time.Hour
)

// pool keeps the authenticated relay connections of sessions that ended,
// per mailbox, so that the next session of the same mailbox skips TCP,
// TLS, EHLO and AUTH. Sessions take and return connections from their own
// goroutines, under mu. A kept connection's idle timer (time.AfterFunc)
// quits it from the timer's goroutine; a connection left with a
// transaction open is reset in a goroutine of its own before it is kept,
// so that the client's QUIT is answered at once.
type pool struct {
	relay *relay
	idle  time.Duration
	log   *slog.Logger
	obs   proxy.Observer

	mu     sync.Mutex
	closed bool
	// idleConns are the connections ready for reuse, oldest first.
	idleConns map[poolKey][]*kept
	// resetting are connections being reset before they are kept.
	resetting map[*kept]struct{}
	// held counts the connections of each key in the pool's hands, idle
	// or resetting; total, of every key.
	held  map[poolKey]int
	total int
	// waiters are logins waiting for a slot of the key's mailbox: a
	// connection kept wakes them, so that they take it rather than wait.
	waiters map[poolKey]map[*waiter]struct{}
}

// poolKey is what a kept connection is authenticated as: it is handed
// only to a login of the same mailbox.
type poolKey struct {
	account string
	via     proxy.Via
}

type waiter struct{ wake context.CancelFunc }

func newPool(r *relay, idle time.Duration, log *slog.Logger, obs proxy.Observer) *pool {
	return &pool{relay: r, idle: idle, log: log, obs: obs,
		idleConns: map[poolKey][]*kept{}, resetting: map[*kept]struct{}{},
		held: map[poolKey]int{}, waiters: map[poolKey]map[*waiter]struct{}{}}
}

// kept is a relay connection that may outlive its session: in a session's
// hands, kept idle, or being reset. It holds its mailbox's slot until it
// is closed.
type kept struct {
	*slotted
	rc   *relayConn
	pool *pool
	key  poolKey
	// until: not kept or reused after this, before its token expires.
	until time.Time
	// open: upstream has a transaction open, which a reset must end
	// before the connection is kept. Set by the session's goroutine (and
	// BDAT's), read after it.
	open atomic.Bool

	// Under pool.mu while the pool holds it.
	since time.Time
	timer *time.Timer
}

// wrap makes u, a relay connection just logged in with up, one that the
// pool may keep.
func (p *pool) wrap(u *slotted, up *proxy.Upstream) Upstream {
	if p == nil {
		return u
	}
	now := time.Now()
	until := up.Expires
	if until.IsZero() {
		until = now.Add(unknownTokenLifetime)
	}
	return &kept{slotted: u, rc: u.Upstream.(*relayConn), pool: p, key: keyOf(up), until: until.Add(-tokenMargin)}
}

func keyOf(up *proxy.Upstream) poolKey { return poolKey{account: up.Account, via: up.Via} }

// Mail, Data and Reset follow upstream's transaction. A Data that got
// upstream's go-ahead ends it either way: the final reply ends it, and a
// failure drops the connection.
func (k *kept) Mail(from string, opts *gosmtp.MailOptions) error {
	err := k.slotted.Mail(from, opts)
	if err == nil {
		k.open.Store(true)
	}
	return err
}

func (k *kept) Data() (MessageWriter, error) {
	w, err := k.slotted.Data()
	if err == nil {
		k.open.Store(false)
	}
	return w, err
}

func (k *kept) Reset() error {
	err := k.slotted.Reset()
	if err == nil {
		k.open.Store(false)
	}
	return err
}

// take returns a kept connection of up's mailbox for the session of tc,
// checked with NOOP, or else a slot of the mailbox (takeSlot) to dial with,
// within one connection_wait in all.
// While it waits for a slot, a connection kept meanwhile wakes it: it
// takes that rather than wait for a slot the kept connection holds.
func (p *pool) take(ctx context.Context, tc *proxy.Conn, up *proxy.Upstream,
	takeSlot func(context.Context, *proxy.Conn, string, time.Time) (func(), error)) (reused Upstream, release func(), err error) {
	// A wake-up resumes the slot wait; it does not start it again.
	start := time.Now()
	if p == nil {
		release, err := takeSlot(ctx, tc, up.Account, start)
		return nil, release, err
	}
	key := keyOf(up)
	for {
		wctx, wake := context.WithCancel(ctx)
		w := &waiter{wake: wake}
		k, idle := p.pop(key, w)
		if k != nil {
			wake()
			if err := p.check(ctx, tc, k); err != nil {
				p.log.Debug("kept upstream session failed its check; trying another", "session", tc.ID(), "account", key.account, "err", err)
				k.Close()
				if ctx.Err() != nil {
					return nil, nil, ctx.Err()
				}
				continue
			}
			p.log.Debug("upstream session reused", "session", tc.ID(), "account", key.account, "idle", idle.Round(time.Millisecond))
			p.obs.UpstreamReused(proxy.SMTP)
			return k, nil, nil
		}
		release, err := takeSlot(wctx, tc, up.Account, start)
		p.unwatch(key, w)
		woken := wctx.Err() != nil && ctx.Err() == nil
		wake()
		if err != nil && woken {
			continue
		}
		return nil, release, err
	}
}

// pop takes the connection of key kept last, with how long it was idle,
// or else registers w to be woken when one is kept.
func (p *pool) pop(key poolKey, w *waiter) (*kept, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for list := p.idleConns[key]; len(list) > 0; list = p.idleConns[key] {
		k := list[len(list)-1]
		p.removeLocked(k)
		if now.Before(k.until) {
			return k, now.Sub(k.since)
		}
		// Its timer is late.
		go k.Quit()
	}
	if p.waiters[key] == nil {
		p.waiters[key] = map[*waiter]struct{}{}
	}
	p.waiters[key][w] = struct{}{}
	return nil, 0
}

func (p *pool) unwatch(key poolKey, w *waiter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.waiters[key], w)
	if len(p.waiters[key]) == 0 {
		delete(p.waiters, key)
	}
}

// check gives k to the session of tc and asks upstream whether k still
// works, within ctx and the time a new connection would have.
func (p *pool) check(ctx context.Context, tc *proxy.Conn, k *kept) error {
	if !tc.Attach(k.rc.conn) {
		return net.ErrClosed
	}
	stop := context.AfterFunc(ctx, func() { k.rc.conn.Close() })
	err := k.rc.noop(p.relay.dialTimeout)
	if !stop() {
		err = context.Cause(ctx)
	}
	return err
}

// put takes k back from the session of tc, which has ended, and keeps it
// for the next session of its mailbox: at once if no transaction is open,
// else after a reset. It quits k instead when the pool is closed, or full
// with no login of k's mailbox waiting, or k's token is about to expire.
func (p *pool) put(k *kept, tc *proxy.Conn) {
	if !tc.Detach(k.rc.conn) {
		// Closed with the session.
		k.Close()
		return
	}
	open := k.open.Load()
	p.mu.Lock()
	// A login waiting for the mailbox takes k at once: no cap to mind.
	wanted := len(p.waiters[k.key]) > 0 || p.held[k.key] < maxKeptPerMailbox && p.total < maxKept
	room := !p.closed && time.Now().Before(k.until) && wanted
	if room {
		p.held[k.key]++
		p.total++
		if open {
			p.resetting[k] = struct{}{}
		} else {
			p.keepLocked(k)
		}
	}
	p.mu.Unlock()
	switch {
	case !room:
		k.Quit()
	case open:
		go p.reset(k, tc.ID())
	default:
		p.log.Debug("upstream session kept for reuse", "session", tc.ID(), "account", k.key.account)
	}
}

// reset ends the transaction that session left open, then keeps k.
func (p *pool) reset(k *kept, session string) {
	err := k.rc.reset(p.relay.hostname, p.relay.dialTimeout)
	p.mu.Lock()
	delete(p.resetting, k)
	keep := err == nil && !p.closed && time.Now().Before(k.until)
	if keep {
		k.open.Store(false)
		p.keepLocked(k)
	} else {
		p.releaseLocked(k)
	}
	p.mu.Unlock()
	switch {
	case keep:
		p.log.Debug("upstream session reset and kept for reuse", "session", session, "account", k.key.account)
	case err != nil:
		p.log.Debug("upstream RSET of a session to keep failed; closing it", "session", session, "account", k.key.account, "err", err)
		k.Close()
	default:
		k.Quit()
	}
}

// keepLocked makes k idle and ready for reuse until its idle timeout or
// token margin, and wakes the logins waiting for its mailbox.
func (p *pool) keepLocked(k *kept) {
	k.since = time.Now()
	p.idleConns[k.key] = append(p.idleConns[k.key], k)
	k.timer = time.AfterFunc(min(p.idle, time.Until(k.until)), func() { p.expire(k) })
	for w := range p.waiters[k.key] {
		w.wake()
	}
}

// expire quits k at its idle timeout, unless a session took it first.
func (p *pool) expire(k *kept) {
	p.mu.Lock()
	if !p.removeLocked(k) {
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.log.Debug("kept upstream session closed after its idle time", "account", k.key.account)
	k.Quit()
}

// removeLocked takes k out of the idle connections, if it is there.
func (p *pool) removeLocked(k *kept) bool {
	list := p.idleConns[k.key]
	for i, x := range list {
		if x == k {
			list = append(list[:i:i], list[i+1:]...)
			if len(list) == 0 {
				delete(p.idleConns, k.key)
			} else {
				p.idleConns[k.key] = list
			}
			k.timer.Stop()
			p.releaseLocked(k)
			return true
		}
	}
	return false
}

// releaseLocked uncounts k, which leaves the pool's hands.
func (p *pool) releaseLocked(k *kept) {
	p.total--
	if p.held[k.key]--; p.held[k.key] == 0 {
		delete(p.held, k.key)
	}
}

// close keeps no more connections and ends those kept: politely with QUIT,
// each in a goroutine of its own so that a drain does not wait for them,
// or at once when hard. Connections being reset are quit when the reset
// ends, or closed now when hard.
func (p *pool) close(hard bool) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	var idle, resetting []*kept
	for _, list := range p.idleConns {
		idle = append(idle, list...)
	}
	for _, k := range idle {
		p.removeLocked(k)
	}
	for k := range p.resetting {
		resetting = append(resetting, k)
	}
	p.mu.Unlock()
	for _, k := range idle {
		if hard {
			k.Close()
		} else {
			go k.Quit()
		}
	}
	if hard {
		for _, k := range resetting {
			k.rc.Close()
		}
	}
}

// noop checks that a kept connection still works, within timeout.
func (u *relayConn) noop(timeout time.Duration) error {
	u.c.CommandTimeout = timeout
	defer func() { u.c.CommandTimeout = u.timeout }()
	return u.c.Noop()
}

// reset ends an open transaction within timeout. go-smtp's RSET makes the
// next command greet again; greeting now spares the next session that
// round trip.
func (u *relayConn) reset(hostname string, timeout time.Duration) error {
	u.c.CommandTimeout = timeout
	defer func() { u.c.CommandTimeout = u.timeout }()
	if err := u.c.Reset(); err != nil {
		return err
	}
	return u.c.Hello(hostname)
}
