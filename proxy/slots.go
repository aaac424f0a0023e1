package proxy

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrSlotWait is Server.TakeSlot's error when no upstream connection of
// the mailbox came free in time. The login pipeline answers it with
// ReasonMailboxBusy, without telling the Authenticator.
var ErrSlotWait = errors.New("timed out waiting for a free upstream connection of this mailbox")

// mailboxSlots caps concurrent upstream connections per account, for every
// protocol alike (each server has its own, as Exchange counts each
// protocol's connections on its own). Waiters
// are served first come, first served, so that a busy mailbox cannot starve
// one session while newer ones get through.
type mailboxSlots struct {
	max int

	mu     sync.Mutex
	groups map[string]*slotGroup
}

type slotGroup struct {
	used    int
	waiters []chan struct{} // closed when handed a slot
}

func newMailboxSlots(max int) *mailboxSlots {
	return &mailboxSlots{max: max, groups: make(map[string]*slotGroup)}
}

// acquire waits for a slot of account until ctx is done. The release
// function it returns may be called more than once.
func (m *mailboxSlots) acquire(ctx context.Context, account string) (release func(), err error) {
	m.mu.Lock()
	g := m.groups[account]
	if g == nil {
		g = &slotGroup{}
		m.groups[account] = g
	}
	if g.used < m.max && len(g.waiters) == 0 {
		g.used++
		m.mu.Unlock()
		return m.releaser(account), nil
	}
	w := make(chan struct{})
	g.waiters = append(g.waiters, w)
	m.mu.Unlock()

	select {
	case <-w:
		return m.releaser(account), nil
	case <-ctx.Done():
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, x := range g.waiters {
		if x == w {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
			return nil, ctx.Err()
		}
	}
	// The slot was handed over as ctx ended: pass it on.
	m.releaseLocked(account)
	return nil, ctx.Err()
}

// acquireWithin is acquire with a wait of at most wait; a wait that runs
// out (rather than ctx) returns ErrSlotWait.
func (m *mailboxSlots) acquireWithin(ctx context.Context, account string, wait time.Duration) (release func(), err error) {
	wctx, cancel := context.WithTimeoutCause(ctx, wait, ErrSlotWait)
	defer cancel()
	release, err = m.acquire(wctx, account)
	if err != nil && errors.Is(context.Cause(wctx), ErrSlotWait) && ctx.Err() == nil {
		err = ErrSlotWait
	}
	return release, err
}

func (m *mailboxSlots) releaser(account string) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.releaseLocked(account)
		})
	}
}

// releaseLocked hands account's slot to the first waiter or frees it.
func (m *mailboxSlots) releaseLocked(account string) {
	g := m.groups[account]
	if len(g.waiters) > 0 && g.used <= m.max {
		close(g.waiters[0])
		g.waiters = g.waiters[1:]
		return
	}
	g.used--
	if g.used == 0 && len(g.waiters) == 0 {
		delete(m.groups, account)
	}
}

// inUse returns how many slots of account are taken.
func (m *mailboxSlots) inUse(account string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g := m.groups[account]; g != nil {
		return g.used
	}
	return 0
}
