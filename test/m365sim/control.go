package m365sim

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"sync"
)

// Endpoint names an endpoint of Entra for failure injection.
type Endpoint string

const (
	EndpointToken      Endpoint = "token"      // /{tenant}/oauth2/v2.0/token
	EndpointDeviceCode Endpoint = "devicecode" // /{tenant}/oauth2/v2.0/devicecode
	// EndpointAuthorize is /{tenant}/oauth2/v2.0/authorize and Authorize:
	// a request with a valid client and redirect URI is redirected back
	// with the failure's error and error_description, as Entra does with
	// errors such as Conditional Access (AADSTS53003); Status is unused.
	EndpointAuthorize Endpoint = "authorize"
)

// injection is the failures waiting at one endpoint.
type injection struct {
	next   int
	nextF  Failure
	always *Failure
}

// FailNext makes the next n token requests fail with f, ahead of any
// SetFailure.
func (e *Entra) FailNext(n int, f Failure) { e.FailNextAt(EndpointToken, n, f) }

// SetFailure makes every token request fail with f until SetFailure(nil).
func (e *Entra) SetFailure(f *Failure) { e.SetFailureAt(EndpointToken, f) }

// FailNextAt makes the next n requests to ep fail with f, ahead of any
// SetFailureAt.
func (e *Entra) FailNextAt(ep Endpoint, n int, f Failure) {
	f.Codes = slices.Clone(f.Codes)
	e.mu.Lock()
	defer e.mu.Unlock()
	in := e.injectionLocked(ep)
	in.next, in.nextF = n, f
}

// SetFailureAt makes every request to ep fail with f until
// SetFailureAt(ep, nil).
func (e *Entra) SetFailureAt(ep Endpoint, f *Failure) {
	e.mu.Lock()
	defer e.mu.Unlock()
	in := e.injectionLocked(ep)
	if f == nil {
		in.always = nil
		return
	}
	copied := *f
	copied.Codes = slices.Clone(f.Codes)
	in.always = &copied
}

func (e *Entra) injectionLocked(ep Endpoint) *injection {
	in := e.injected[ep]
	if in == nil {
		in = &injection{}
		e.injected[ep] = in
	}
	return in
}

// injectedFailure takes the failure due at ep, if any.
func (e *Entra) injectedFailure(ep Endpoint) *Failure {
	e.mu.Lock()
	defer e.mu.Unlock()
	in := e.injected[ep]
	switch {
	case in == nil:
		return nil
	case in.next > 0:
		in.next--
		f := in.nextF
		return &f
	case in.always != nil:
		f := *in.always
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

// TokenRequestsByClient counts requests to the token endpoint, failed ones
// too, by the client_id they name: in the form, else as the Basic
// authentication user; "" for neither (an assertion alone). With one app
// per app-only account, it counts each account's requests.
func (e *Entra) TokenRequestsByClient() map[string]int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.byClient)
}

// requestClientID is the client a token request names, before it is
// authenticated.
func requestClientID(r *http.Request) string {
	r.ParseForm()
	if id := r.PostForm.Get("client_id"); id != "" {
		return id
	}
	id, _, _ := r.BasicAuth()
	return id
}

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
// waitLen waits until *list, guarded by mu, holds at least n items and
// returns a copy.
func waitLen[T any](ctx context.Context, mu *sync.Mutex, changed *chan struct{}, list *[]T, n int) ([]T, error) {
	var out []T
	err := waitUntil(ctx, mu, changed, func() bool {
		out = *list
		return len(out) >= n
	})
	if err != nil {
		return nil, err
	}
	return slices.Clone(out), nil
}

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
