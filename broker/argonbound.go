package broker

import (
	"errors"
	"runtime/debug"
	"sync"
	"time"
)

// Bounds of the argon2 work.
//
// Each argon2 run (defaultArgon) takes one core for a few tens of
// milliseconds and allocates 19 MiB, garbage as soon as it ends. At most
// argonSlots(GOMAXPROCS) = ⌈GOMAXPROCS/2⌉ runs go at once (1 on a 2-core
// machine), whatever they are for: an attacker can keep at most half the
// cores busy with argon2, and argon2's memory in flight is at most
// slots × 19 MiB. The Go heap may hold as much again in finished runs
// until the next collection, so the peak attributable to argon2 is about
// 2 × slots × 19 MiB (38 MiB on 2 cores) above the broker's baseline.
//
// A login waits at most argonMaxWait for a slot; after that it fails as
// temporarily unavailable (NO [UNAVAILABLE], SMTP 454), not as a wrong
// password: a legitimate client retries later instead of asking its user for
// a new password, and an attacker learns nothing about the password. With the
// throttle in front, a queue that long only forms under a flood from many
// sources.
//
// The runtime would keep the freed argon2 heap resident for minutes after a
// burst (until a periodic collection and the background scavenger). When
// the semaphore drains, memReturner waits argonIdleBeforeFree and, if no run
// started meanwhile, calls debug.FreeOSMemory, at most once every
// argonFreeEvery: resident memory returns to the baseline within seconds of
// a burst, for the price of one collection of a small heap.
const (
	argonMaxWait        = 5 * time.Second
	argonIdleBeforeFree = time.Second
	argonFreeEvery      = 10 * time.Second
)

// argonSlots is the number of concurrent argon2 runs for n cores.
func argonSlots(n int) int { return max(1, (n+1)/2) }

var errArgonQueue = errors.New("waited too long for an argon2 slot")

// memReturner returns freed memory to the OS once argon2 work has stopped
// for a while, at most once per every.
type memReturner struct {
	quiet, every time.Duration
	busy         func() bool // reports whether argon2 runs now
	free         func()

	mu      sync.Mutex
	pending bool
	last    time.Time
}

func newMemReturner(busy func() bool) *memReturner {
	return &memReturner{quiet: argonIdleBeforeFree, every: argonFreeEvery, busy: busy, free: debug.FreeOSMemory}
}

// idle is called when the last argon2 run in flight ended.
func (m *memReturner) idle() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending {
		return
	}
	m.pending = true
	wait := max(m.quiet, time.Until(m.last.Add(m.every)))
	time.AfterFunc(wait, m.fire)
}

func (m *memReturner) fire() {
	m.mu.Lock()
	m.pending = false
	if m.busy() {
		// Still working: the run's end calls idle again.
		m.mu.Unlock()
		return
	}
	m.last = time.Now()
	m.mu.Unlock()
	m.free()
}
