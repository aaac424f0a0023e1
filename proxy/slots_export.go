package proxy

import (
	"context"
	"time"
)

// Slots caps concurrent work per account, first come first served, as the
// servers' upstream connection slots do (Server.TakeSlot). Upstreams that
// are no connections use it for their own per-mailbox limits, such as the
// Microsoft Graph upstream's concurrent requests.
type Slots struct{ s *mailboxSlots }

// NewSlots returns slots allowing max holders per account at once.
func NewSlots(max int) *Slots {
	if max < 1 {
		max = 1
	}
	return &Slots{s: newMailboxSlots(max)}
}

// Acquire waits for a slot of account until ctx is done, or for at most
// wait when wait > 0 (then ErrSlotWait). The release function frees the
// slot; it may be called more than once.
func (s *Slots) Acquire(ctx context.Context, account string, wait time.Duration) (release func(), err error) {
	if wait > 0 {
		return s.s.acquireWithin(ctx, account, wait)
	}
	return s.s.acquire(ctx, account)
}

// InUse returns how many slots of account are taken.
func (s *Slots) InUse(account string) int { return s.s.inUse(account) }
