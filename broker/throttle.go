package broker

import (
	"container/list"
	"fmt"
	"hash/maphash"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Failed-login throttling.
//
// App passwords carry 130 random bits, so guessing one is hopeless; what an
// attacker can do is burn argon2 (a core and 19 MiB per check), fill the log,
// and lock legitimate users out. The throttle keeps the first two cheap
// without doing much of the third.
//
// Failures are counted in leaky buckets, one per login name (normalized,
// whether or not it is configured) and one per source (an IPv4 address, or
// an IPv6 /64, which one host usually owns whole). A bucket's level rises by
// one per failed check and leaks one failure every throttleLeak, so a burst is
// forgotten a few minutes after it stops and a slow trickle (a client retrying
// an old password every few minutes) never builds up.
//
// Every attempt that is not a password already proven in this process (the
// success cache, which is consulted first and bypasses all of this) is judged
// against both buckets before any argon2:
//
//   - below free failures: checked at once;
//   - from free on: checked after a delay that doubles with each further
//     failure (throttleBaseDelay, 2×, 4×, …), capped at throttleMaxDelay;
//   - at refuse failures (more than refuse-1 not yet leaked away): refused
//     after throttleMaxDelay without argon2, with the same reply as a wrong
//     password.
//
// The delay is slept in the session's goroutine, bounded by its context,
// before the argon2 semaphore is even asked for: a throttled attempt holds
// no argon2 slot. An admitted check charges its buckets up front and is
// refunded unless it fails on the credentials, so that many concurrent
// attempts cannot all slip in under the threshold; concurrent attempts with
// the same name and password (a client opening several connections at once)
// are one guess and share one charge. Refused attempts charge
// nothing: a bucket never rises above its refusal level and unlocks one leak
// period after an attack stops, and a persistent attacker gets one real check
// per leak period per bucket.
//
// The name bucket refuses any attempt on that name: one name cannot be
// hammered from anywhere. The source bucket refuses only attempts on login
// names that are not configured; for configured names it only delays (at
// most throttleMaxDelay). An attacker behind a NAT or proxy that legitimate
// users share, spraying other names, thus makes their logins slower but never
// refuses them: their own name's bucket is clean. A refused unknown name
// waits as long as a checked known one (the delay plus the last argon2's
// duration), so the refusal does not tell which names are configured.
//
// State is bounded: at most throttleMaxKeys buckets (about 200 bytes each,
// so ~2 MiB), the least recently charged evicted first. Names are kept as
// keyed 64-bit hashes, never as the (client-chosen, arbitrarily long) text.
const (
	throttleLeak      = 30 * time.Second
	throttleBaseDelay = 125 * time.Millisecond
	throttleMaxDelay  = 2 * time.Second
	throttleMaxKeys   = 10000
)

// throttleLimits are the levels at which a kind of bucket starts to delay
// and to refuse.
type throttleLimits struct{ free, refuse float64 }

var (
	nameLimits   = throttleLimits{free: 5, refuse: 10}
	sourceLimits = throttleLimits{free: 10, refuse: 30}
)

// throttleKey names a bucket: a source prefix, or the hash of a login name
// (src invalid).
type throttleKey struct {
	src  netip.Prefix
	name uint64
}

type throttleEntry struct {
	key   throttleKey
	level float64
	at    time.Time // when level was last brought up to date
}

type throttle struct {
	seed    maphash.Seed
	maxKeys int

	mu  sync.Mutex
	m   map[throttleKey]*list.Element
	lru list.List // of *throttleEntry, most recently charged first
	// inflight are the guesses being checked, by HMAC of name and
	// password; as many as attempts in flight.
	inflight map[cacheKey]*guess
}

// guess is one name and password being checked by one or more concurrent
// attempts, charged once.
type guess struct {
	n       int // attempts
	failed  bool
	charged []throttleKey
}

func newThrottle(maxKeys int) *throttle {
	return &throttle{seed: maphash.MakeSeed(), maxKeys: maxKeys, m: make(map[throttleKey]*list.Element), inflight: make(map[cacheKey]*guess)}
}

// attempt is the throttle's verdict on one login attempt.
type attempt struct {
	delay  time.Duration
	refuse bool
	// reason says why a refused attempt was refused, for the log.
	reason string
	// g is the admitted attempt's guess, to settle.
	g    *guess
	gkey cacheKey
}

// sourceOf returns the bucket of a remote address: the address itself for
// IPv4, its /64 for IPv6. ok is false for addresses that are not IP.
func sourceOf(a net.Addr) (p netip.Prefix, ok bool) {
	var ip netip.Addr
	switch a := a.(type) {
	case nil:
		return p, false
	case *net.TCPAddr:
		ip, ok = netip.AddrFromSlice(a.IP)
	case *net.UDPAddr:
		ip, ok = netip.AddrFromSlice(a.IP)
	default:
		ap, err := netip.ParseAddrPort(a.String())
		ip, ok = ap.Addr(), err == nil
	}
	if !ok {
		return p, false
	}
	ip = ip.Unmap().WithZone("")
	bits := 64
	if ip.Is4() {
		bits = 32
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

// decayed returns e's level at now.
func (e *throttleEntry) decayed(now time.Time) float64 {
	if el := now.Sub(e.at); el > 0 {
		return max(0, e.level-float64(el)/float64(throttleLeak))
	}
	return e.level
}

// level returns the current level of key, 0 if untracked. Callers hold mu.
func (t *throttle) level(key throttleKey, now time.Time) float64 {
	if el, ok := t.m[key]; ok {
		return el.Value.(*throttleEntry).decayed(now)
	}
	return 0
}

// add changes key's level by d (bounded to [0, ceiling]) and marks it the
// most recently used, evicting the least recently used bucket if full.
// Callers hold mu.
func (t *throttle) add(key throttleKey, d, ceiling float64, now time.Time) {
	el, ok := t.m[key]
	if !ok {
		if d <= 0 {
			return
		}
		for t.lru.Len() >= t.maxKeys {
			old := t.lru.Back()
			delete(t.m, old.Value.(*throttleEntry).key)
			t.lru.Remove(old)
		}
		el = t.lru.PushFront(&throttleEntry{key: key, at: now})
		t.m[key] = el
	}
	e := el.Value.(*throttleEntry)
	e.level = min(ceiling, max(0, e.decayed(now)+d))
	e.at = now
	if e.level == 0 {
		delete(t.m, key)
		t.lru.Remove(el)
		return
	}
	t.lru.MoveToFront(el)
}

// delayOf is the delay of a bucket at level under limits.
func delayOf(level float64, l throttleLimits) time.Duration {
	n := math.Floor(level + 1e-9)
	if n < l.free {
		return 0
	}
	steps := n - l.free
	if steps >= 16 {
		return throttleMaxDelay
	}
	return min(throttleMaxDelay, throttleBaseDelay<<int(steps))
}

// admit judges an attempt on login name (normalized) from src (hasSrc
// false when the remote is not IP); known says whether name is a
// configured login, gkey identifies the guess (name and password). An
// admitted attempt is charged to its buckets unless the same guess is in
// flight; settle must follow.
func (t *throttle) admit(name string, src netip.Prefix, hasSrc, known bool, gkey cacheKey, now time.Time) attempt {
	nameKey := throttleKey{name: maphash.String(t.seed, name)}
	srcKey := throttleKey{src: src}
	t.mu.Lock()
	defer t.mu.Unlock()
	nl := t.level(nameKey, now)
	var sl float64
	if hasSrc {
		sl = t.level(srcKey, now)
	}
	var a attempt
	switch {
	case nl > nameLimits.refuse-1:
		a.refuse = true
	case hasSrc && !known && sl > sourceLimits.refuse-1:
		a.refuse = true
	}
	if a.refuse {
		srcText := "none"
		if hasSrc {
			srcText = src.String()
		}
		a.delay = throttleMaxDelay
		a.reason = fmt.Sprintf("throttled: login name %q has %.0f recent failures, source %s has %.0f", clip(name, 100), math.Ceil(nl), srcText, math.Ceil(sl))
		return a
	}
	a.delay = delayOf(nl, nameLimits)
	if hasSrc {
		a.delay = max(a.delay, delayOf(sl, sourceLimits))
	}
	a.gkey = gkey
	if g := t.inflight[gkey]; g != nil {
		g.n++
		a.g = g
		return a
	}
	a.g = &guess{n: 1}
	t.inflight[gkey] = a.g
	t.add(nameKey, 1, nameLimits.refuse, now)
	a.g.charged = append(a.g.charged, nameKey)
	if hasSrc {
		t.add(srcKey, 1, sourceLimits.refuse, now)
		a.g.charged = append(a.g.charged, srcKey)
	}
	return a
}

// settle ends an admitted attempt. When the last attempt of its guess
// ends, the charge stays if any of them failed on the credentials and is
// refunded otherwise.
func (t *throttle) settle(a attempt, failed bool, now time.Time) {
	if a.g == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	g := a.g
	g.failed = g.failed || failed
	if g.n--; g.n > 0 {
		return
	}
	delete(t.inflight, a.gkey)
	if g.failed {
		return
	}
	for _, k := range g.charged {
		ceiling := nameLimits.refuse
		if k.src.IsValid() {
			ceiling = sourceLimits.refuse
		}
		if _, ok := t.m[k]; ok {
			t.add(k, -1, ceiling, now)
		}
	}
}

// size returns the number of tracked buckets.
func (t *throttle) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// clip shortens s to at most n bytes for a log line.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
