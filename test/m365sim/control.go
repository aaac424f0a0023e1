package m365sim

import (
	"context"
	"net/http"
	"slices"
	"sync"
)

// FailNext makes the next n token requests fail with f, ahead of any
// SetFailure.
func (e *Entra) FailNext(n int, f Failure) {
	f.Codes = slices.Clone(f.Codes)
	e.mu.Lock()
	e.failNext, e.failNextF = n, f
	e.mu.Unlock()
}

// SetFailure makes every token request fail with f until SetFailure(nil).
func (e *Entra) SetFailure(f *Failure) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if f == nil {
		e.failure = nil
		return
	}
	copied := *f
	copied.Codes = slices.Clone(f.Codes)
	e.failure = &copied
}

func (e *Entra) injectedFailure() *Failure {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failNext > 0 {
		e.failNext--
		f := e.failNextF
		return &f
	}
	if e.failure != nil {
		f := *e.failure
		return &f
	}
	return nil
}

// Hold makes token requests wait until release is called (or Entra is
// closed). Requests are counted by TokenRequests when they arrive, so a
// test can wait for them to pile up. Holds nest: requests go on once every
// release has been called.
func (e *Entra) Hold() (release func()) {
	e.mu.Lock()
	if e.holds == 0 {
		e.gate = make(chan struct{})
	}
	e.holds++
	e.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.holds--
			if e.holds == 0 {
				close(e.gate)
				e.gate = nil
			}
		})
	}
}

// waitHold blocks while held; false means the request is gone.
func (e *Entra) waitHold(r *http.Request) bool {
	e.mu.Lock()
	gate := e.gate
	e.mu.Unlock()
	if gate == nil {
		return true
	}
	select {
	case <-gate:
		return true
	case <-e.done:
		return false
	case <-r.Context().Done():
		return false
	}
}

// TokenRequests counts requests to the token endpoint, failed ones too.
func (e *Entra) TokenRequests() int64 { return e.tokenRequests.Load() }

// WaitTokenRequests waits until TokenRequests() >= n.
func (e *Entra) WaitTokenRequests(ctx context.Context, n int64) error {
	return e.waitFor(ctx, func() bool { return e.tokenRequests.Load() >= n })
}

// waitFor waits until cond, checked after every broadcast, holds.
func (e *Entra) waitFor(ctx context.Context, cond func() bool) error {
	return waitUntil(ctx, &e.mu, &e.changed, cond)
}

// waitUntil waits until cond holds. cond is checked under mu, first now and
// then each time the channel *changed (read under mu) is closed; whoever
// changes what cond looks at closes and replaces it.
func waitUntil(ctx context.Context, mu *sync.Mutex, changed *chan struct{}, cond func() bool) error {
	for {
		mu.Lock()
		ok, ch := cond(), *changed
		mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
