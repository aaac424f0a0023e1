package broker

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
)

// sleepRecorder replaces the throttle's sleep: it records each delay and
// returns at once, so that tests run on the fake clock alone.
type sleepRecorder struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (s *sleepRecorder) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delays = append(s.delays, d)
	return ctx.Err()
}

// take returns the delays slept since the last take.
func (s *sleepRecorder) take() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.delays
	s.delays = nil
	return d
}

func (s *sleepRecorder) last(t *testing.T) time.Duration {
	t.Helper()
	d := s.take()
	switch len(d) {
	case 0:
		return 0
	case 1:
		return d[0]
	}
	t.Fatalf("slept %v, want at most once", d)
	return 0
}

// throttleBroker is a broker whose throttle sleeps on a recorder.
func throttleBroker(t *testing.T, e *env) (*Broker, *sleepRecorder) {
	t.Helper()
	rec := &sleepRecorder{}
	b := e.broker(t, func(b *Broker) { b.pw.sleep = rec.sleep })
	return b, rec
}

func tcpAddr(s string) net.Addr {
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(s), 40000))
}

// loginFrom authenticates user from the address remote.
func loginFrom(b *Broker, user, password, remote string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := b.Authenticate(ctx, &proxy.Login{Protocol: proxy.IMAP, Username: user, Password: password, Remote: tcpAddr(remote)})
	return err
}

// wrongPassword is a well-formed app password that is not one.
func wrongPassword() string { return newAppPassword() }

// Failures on one name are checked at once up to nameLimits.free, then
// after doubling delays, then refused without argon2 with the reply of a
// wrong password; a password proven before still gets in at once, and the
// name unlocks one leak period after the attack stops.
func TestThrottleDelaysGrowThenRefuses(t *testing.T) {
	e := newEnv(t)
	b, sleeps := throttleBroker(t, e)
	pw := e.addPassword(t, b, mailboxA)
	fresh := e.addPassword(t, b, mailboxA) // right, but never proven
	if err := loginFrom(b, "alice", pw, "192.0.2.1"); err != nil {
		t.Fatalf("first login: %v", err)
	}
	sleeps.take()
	hashes := func() int64 { return b.pw.hashes.Load() }

	// Each from another source: only the name's bucket counts.
	want := []time.Duration{0, 0, 0, 0, 0, 125 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}
	for i, wantDelay := range want {
		before := hashes()
		err := loginFrom(b, "alice", wrongPassword(), fmt.Sprintf("198.51.100.%d", i+1))
		if le := wantKind(t, err, proxy.KindCredentials); le.Reason != reasonCredentials || strings.Contains(err.Error(), "throttled") {
			t.Fatalf("failure %d: got %v, want a plain wrong password", i+1, err)
		}
		if got := sleeps.last(t); got != wantDelay {
			t.Fatalf("failure %d: delayed %v, want %v", i+1, got, wantDelay)
		}
		if hashes()-before != 1 {
			t.Fatalf("failure %d: %d argon2 runs, want 1", i+1, hashes()-before)
		}
	}

	// Now refused, without argon2, after the longest delay, with the same
	// reply as a wrong password.
	before := hashes()
	for i := range 20 {
		bad := wrongPassword()
		err := loginFrom(b, "ALICE", bad, fmt.Sprintf("203.0.113.%d", i+1))
		le := wantKind(t, err, proxy.KindCredentials)
		if le.Reason != reasonCredentials {
			t.Fatalf("throttled reply %q, want %q as for a wrong password", le.Reason, reasonCredentials)
		}
		msg := err.Error()
		if !strings.Contains(msg, "throttled") || !strings.Contains(msg, `"alice"`) || !strings.Contains(msg, fmt.Sprintf("203.0.113.%d/32", i+1)) {
			t.Fatalf("refusal %q does not say throttled with the name and source", msg)
		}
		if strings.Contains(msg, bad) {
			t.Fatalf("refusal %q contains the password", msg)
		}
		if got := sleeps.last(t); got < throttleMaxDelay || got > throttleMaxDelay+time.Second {
			t.Fatalf("refusal delayed %v, want %v plus an argon2's time", got, throttleMaxDelay)
		}
	}
	if hashes() != before {
		t.Fatalf("refusals ran argon2 %d times", hashes()-before)
	}
	// The right password not yet proven is refused as well: the name is
	// locked for everyone who has not proven a password.
	if err := loginFrom(b, "alice", fresh, "192.0.2.1"); err == nil || !strings.Contains(err.Error(), "throttled") {
		t.Fatalf("unproven password on a locked name: got %v, want throttled", err)
	}
	sleeps.take()

	// A proven password gets in at once, from anywhere.
	for _, src := range []string{"192.0.2.1", "203.0.113.1", "2001:db8::1"} {
		if err := loginFrom(b, "alice", pw, src); err != nil {
			t.Fatalf("proven password from %s: %v", src, err)
		}
		if d := sleeps.last(t); d != 0 {
			t.Fatalf("proven password delayed %v", d)
		}
	}
	if hashes() != before {
		t.Fatalf("proven password ran argon2")
	}
	// Another name is not affected.
	if err := loginFrom(b, mailboxB, wrongPassword(), "203.0.113.1"); err == nil || strings.Contains(err.Error(), "throttled") {
		t.Fatalf("other name: got %v, want a plain wrong password", err)
	}
	if d := sleeps.last(t); d != 0 {
		t.Fatalf("other name delayed %v", d)
	}

	// One leak period after the attack: checked again, after a delay.
	e.clock.Advance(throttleLeak)
	if err := loginFrom(b, "alice", fresh, "192.0.2.1"); err != nil {
		t.Fatalf("right password one leak period later: %v", err)
	}
	if d := sleeps.last(t); d != 2*time.Second {
		t.Fatalf("delayed %v, want %v", d, 2*time.Second)
	}
	// And free after the whole burst has leaked away.
	e.clock.Advance(time.Duration(nameLimits.refuse) * throttleLeak)
	err := loginFrom(b, "alice", wrongPassword(), "192.0.2.1")
	if err == nil || strings.Contains(err.Error(), "throttled") {
		t.Fatalf("got %v, want a plain wrong password", err)
	}
	if d := sleeps.last(t); d != 0 {
		t.Fatalf("delayed %v after the burst leaked away", d)
	}
}

// An attacker behind a shared source spraying names that are not
// configured gets delayed, then refused without argon2; a user behind the
// same source logging in to a configured name is only delayed, and other
// sources notice nothing. An IPv6 /64 is one source.
func TestThrottleSourceSpray(t *testing.T) {
	e := newEnv(t)
	b, sleeps := throttleBroker(t, e)
	pw := e.addPassword(t, b, mailboxB) // never proven
	hashes := func() int64 { return b.pw.hashes.Load() }

	var delays []time.Duration
	for i := range int(sourceLimits.refuse) {
		src := fmt.Sprintf("2001:db8:1:2:%x::1", i) // all in one /64
		err := loginFrom(b, fmt.Sprintf("user%d@contoso.example", i), wrongPassword(), src)
		if err == nil || strings.Contains(err.Error(), "throttled") {
			t.Fatalf("attempt %d: got %v, want a plain failure", i, err)
		}
		delays = append(delays, sleeps.last(t))
	}
	if delays[int(sourceLimits.free)-1] != 0 || delays[int(sourceLimits.free)] != throttleBaseDelay || delays[len(delays)-1] != throttleMaxDelay {
		t.Fatalf("delays %v: want none up to %v failures, then growing to %v", delays, sourceLimits.free, throttleMaxDelay)
	}
	before := hashes()
	err := loginFrom(b, "user-next@contoso.example", wrongPassword(), "2001:db8:1:2:ffff::9")
	if err == nil || !strings.Contains(err.Error(), "throttled") || !strings.Contains(err.Error(), "2001:db8:1:2::/64") {
		t.Fatalf("got %v, want throttled naming the /64", err)
	}
	if hashes() != before {
		t.Fatalf("a refusal ran argon2")
	}
	sleeps.take()

	// A configured name from the same /64: delayed, then checked.
	if err := loginFrom(b, mailboxB, pw, "2001:db8:1:2::7"); err != nil {
		t.Fatalf("configured name behind a throttled source: %v", err)
	}
	if d := sleeps.last(t); d != throttleMaxDelay {
		t.Fatalf("delayed %v, want %v", d, throttleMaxDelay)
	}
	// Another /64 and an IPv4 source are not affected.
	for _, src := range []string{"2001:db8:1:3::1", "192.0.2.1"} {
		if err := loginFrom(b, "user-other@contoso.example", wrongPassword(), src); err == nil || strings.Contains(err.Error(), "throttled") {
			t.Fatalf("from %s: got %v, want a plain failure", src, err)
		}
		if d := sleeps.last(t); d != 0 {
			t.Fatalf("from %s: delayed %v", src, d)
		}
	}
}

// Concurrent attempts cannot slip in under the threshold: each admitted
// check is charged before it runs.
func TestThrottleConcurrentBurst(t *testing.T) {
	e := newEnv(t)
	b, _ := throttleBroker(t, e)
	before := b.pw.hashes.Load()
	var wg sync.WaitGroup
	var throttled atomic.Int32
	for i := range 100 {
		wg.Go(func() {
			err := loginFrom(b, "alice", wrongPassword(), fmt.Sprintf("198.51.100.%d", i))
			if err != nil && strings.Contains(err.Error(), "throttled") {
				throttled.Add(1)
			}
		})
	}
	wg.Wait()
	if got := b.pw.hashes.Load() - before; got != int64(nameLimits.refuse) {
		t.Fatalf("100 concurrent wrong passwords ran argon2 %d times, want %v", got, nameLimits.refuse)
	}
	if got := throttled.Load(); got != 100-int32(nameLimits.refuse) {
		t.Fatalf("%d refused as throttled, want %v", got, 100-nameLimits.refuse)
	}
}

// A client opening many connections at once with the same password makes
// one guess: charged once, and refunded when it proves right.
func TestThrottleSameGuessChargedOnce(t *testing.T) {
	e := newEnv(t)
	const n = 30
	var all atomic.Bool
	b, sleeps := throttleBroker(t, e)
	pw := e.addPassword(t, b, mailboxA)
	// Hold the one check until every attempt has joined the guess.
	b.pw.onHash = func() {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			b.pw.throttle.mu.Lock()
			joined := 0
			for _, g := range b.pw.throttle.inflight {
				joined = max(joined, g.n)
			}
			b.pw.throttle.mu.Unlock()
			if joined == n {
				all.Store(true)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() { errs <- loginFrom(b, "alice", pw, "192.0.2.1") })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("login: %v", err)
		}
	}
	if !all.Load() {
		t.Fatalf("the attempts did not overlap")
	}
	for _, d := range sleeps.take() {
		if d != 0 {
			t.Fatalf("a login was delayed %v", d)
		}
	}
	if got := b.pw.hashes.Load(); got != 2 {
		t.Fatalf("%d argon2 runs, want 2 (issue, one check)", got)
	}
	b.pw.throttle.mu.Lock()
	defer b.pw.throttle.mu.Unlock()
	if len(b.pw.throttle.m) != 0 || len(b.pw.throttle.inflight) != 0 {
		t.Fatalf("%d buckets, %d guesses left after a success", len(b.pw.throttle.m), len(b.pw.throttle.inflight))
	}
}

// Successes and temporary failures are refunded: a user logging in often
// is never delayed.
func TestThrottleRefundsSuccess(t *testing.T) {
	e := newEnv(t)
	b, sleeps := throttleBroker(t, e)
	var pws []string
	for range 20 {
		pws = append(pws, e.addPassword(t, b, mailboxA))
	}
	for _, pw := range pws {
		if err := loginFrom(b, "alice", pw, "192.0.2.1"); err != nil {
			t.Fatal(err)
		}
		if d := sleeps.last(t); d != 0 {
			t.Fatalf("successful logins delayed %v", d)
		}
	}
	if n := b.pw.throttle.size(); n != 0 {
		t.Fatalf("%d buckets left after successes only", n)
	}
}

// Spraying names and sources cannot grow the throttle's memory past
// maxKeys; the oldest bucket goes first.
func TestThrottleBounded(t *testing.T) {
	now := newFakeClock().Now()
	th := newThrottle(100)
	var guesses uint64
	gk := func() (k cacheKey) { // a new guess each time
		guesses++
		binary.BigEndian.PutUint64(k[:], guesses)
		return k
	}
	src := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
	}
	// A locked name, charged again and again, stays while a spray goes by.
	for range int(nameLimits.refuse) {
		th.settle(th.admit("victim", src(0), true, true, gk(), now), true, now)
	}
	for i := range 10 * th.maxKeys {
		a := th.admit(fmt.Sprintf("name%d", i), src(i), true, false, gk(), now)
		th.settle(a, true, now)
		if i%3 == 0 {
			th.admit("victim", src(0), true, true, gk(), now) // refused, but looked at
			th.settle(th.admit("victim2", src(0), true, true, gk(), now), true, now)
		}
		if n := th.size(); n > th.maxKeys {
			t.Fatalf("%d buckets after %d attempts, want at most %d", n, i+1, th.maxKeys)
		}
	}
	if th.lru.Len() != len(th.m) {
		t.Fatalf("list holds %d, map %d", th.lru.Len(), len(th.m))
	}
	if !th.admit("victim2", src(1), true, true, gk(), now).refuse {
		t.Fatalf("a bucket charged recently was evicted")
	}
	if _, ok := th.m[throttleKey{src: src(1)}]; ok {
		t.Fatalf("an old source survived the spray")
	}
}

func TestSourceOf(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want string
	}{
		{tcpAddr("192.0.2.7"), "192.0.2.7/32"},
		{tcpAddr("::ffff:192.0.2.7"), "192.0.2.7/32"},
		{tcpAddr("2001:db8:a:b:c:d:e:f"), "2001:db8:a:b::/64"},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0"}, "fe80::/64"},
		{&net.UnixAddr{Name: "/run/x", Net: "unix"}, ""},
		{nil, ""},
	}
	for _, tt := range tests {
		p, ok := sourceOf(tt.addr)
		got := ""
		if ok {
			got = p.String()
		}
		if got != tt.want {
			t.Errorf("sourceOf(%v) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

func TestArgonSlots(t *testing.T) {
	for n, want := range map[int]int{0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 16: 8} {
		if got := argonSlots(n); got != want {
			t.Errorf("argonSlots(%d) = %d, want %d", n, got, want)
		}
	}
	e := newEnv(t)
	b := e.broker(t)
	if got, want := cap(b.pw.sem), argonSlots(runtime.GOMAXPROCS(0)); got != want {
		t.Fatalf("semaphore of %d, want %d", got, want)
	}
}

// A login that cannot get an argon2 slot within maxWait fails as
// temporarily unavailable.
func TestArgonWaitBounded(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t, func(b *Broker) { b.pw.maxWait = 50 * time.Millisecond })
	for range cap(b.pw.sem) {
		b.pw.sem <- struct{}{}
	}
	start := time.Now()
	err := loginFrom(b, "alice", wrongPassword(), "192.0.2.1")
	wantKind(t, err, proxy.KindUnavailable)
	if el := time.Since(start); el < 50*time.Millisecond || el > 5*time.Second {
		t.Fatalf("gave up after %v, want about 50ms", el)
	}
	for range cap(b.pw.sem) {
		b.pw.release()
	}
	// Not a failed check: refunded.
	if n := b.pw.throttle.size(); n != 0 {
		t.Fatalf("%d buckets charged by a login that never ran", n)
	}
	err = loginFrom(b, "alice", wrongPassword(), "192.0.2.1")
	wantKind(t, err, proxy.KindCredentials)
}
