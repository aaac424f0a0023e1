package broker

import (
	"errors"
	"time"
)

// Bounds of the argon2 work.
//
// Each argon2 run (defaultArgon) takes one core for a few tens of
// milliseconds and allocates 19 MiB, garbage as soon as it ends. At most
// argonSlots(GOMAXPROCS) = ⌈GOMAXPROCS/2⌉ runs go at once (1 on a 2-core
// machine), whatever they are for: an attacker can keep at most half the
// cores busy with argon2, and argon2's memory in flight is at most
// slots × 19 MiB. Each run's end returns its memory to the OS before its
// slot is free (debug.FreeOSMemory): with a mere collection, the next run's
// 19 MiB could land beside the freed, still resident, ones, doubling the
// peak, and a burst's memory would stay resident for minutes. The price is
// a full collection per run, which grows with the heap (thousands of idle
// sessions), and the return of the freed pages: 1–2 ms against a 45–70 ms
// run, measured with a small heap.
//
// A login waits at most argonMaxWait for a slot; after that it fails as
// temporarily unavailable (NO [UNAVAILABLE], SMTP 454), not as a wrong
// password: a legitimate client retries later instead of asking its user for
// a new password, and an attacker learns nothing about the password. With the
// throttle in front, a queue that long only forms under a flood from many
// sources.
const argonMaxWait = 5 * time.Second

// argonSlots is the number of concurrent argon2 runs for n cores.
func argonSlots(n int) int { return max(1, (n+1)/2) }

var errArgonQueue = errors.New("waited too long for an argon2 slot")
