package broker

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/store"
	"golang.org/x/sync/singleflight"
)

// touchEvery limits last-used writes to one per app password per minute.
const touchEvery = time.Minute

const reasonCredentials = "invalid credentials"

// passwords verifies app passwords.
type passwords struct {
	life  *lifecycle
	store store.Store
	now   func() time.Time
	log   *slog.Logger
	// sem bounds concurrent argon2 runs: each takes 19 MiB and a core
	// (see argonbound.go). A login waits at most maxWait for a slot.
	sem      chan struct{}
	maxWait  time.Duration
	collect  func() // after each run: debug.FreeOSMemory
	cache    *successCache
	flights  singleflight.Group
	throttle *throttle
	// sleep waits out a throttle delay; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error
	// lastArgon is how long the last argon2 run took: a refusal without
	// argon2 waits as long, so that it looks like a check.
	lastArgon atomic.Int64
	// params are for new hashes. dummy, with the same params, is hashed
	// against when the user or ID is unknown, so that those cost the same
	// as a wrong password.
	params argonParams
	dummy  phcHash

	touchMu sync.Mutex
	touched map[string]time.Time

	hashes atomic.Int64 // argon2 runs, for tests
	onHash func()       // test hook, called holding the semaphore
}

// newPasswords makes the app password checker of a machine with cores
// cores (GOMAXPROCS); argon2 runs on at most argonSlots(cores) of them.
func newPasswords(life *lifecycle, st store.Store, now func() time.Time, log *slog.Logger, cores int) *passwords {
	p := &passwords{
		life: life, store: st, now: now, log: log,
		sem:      make(chan struct{}, argonSlots(cores)),
		maxWait:  argonMaxWait,
		collect:  debug.FreeOSMemory,
		cache:    newSuccessCache(),
		throttle: newThrottle(throttleMaxKeys),
		sleep:    throttleSleep,
		touched:  make(map[string]time.Time),
	}
	p.setParams(defaultArgon)
	return p
}

// throttleSleep waits d or until ctx ends.
func throttleSleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *passwords) setParams(params argonParams) {
	p.params = params
	p.dummy = phcHash{params: params, salt: make([]byte, saltLen), hash: make([]byte, keyLen)}
}

func errCredentials(detail string) error {
	return &proxy.LoginError{Kind: proxy.KindCredentials, Reason: reasonCredentials, Err: errors.New(detail)}
}

func errBusy(err error) error {
	return &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: "server busy, try again later", Err: err}
}

// verify checks login's password for mailbox ("" when the login name is
// unknown) and returns the app password's ID. Every failure of the
// credentials, throttled ones included, gives the same error to the client;
// its detail, for the log, says why.
//
// A password proven in this process gets in at once. Any other attempt is
// first judged by the throttle (see throttle.go): delayed, or refused
// without argon2.
func (p *passwords) verify(ctx context.Context, login *proxy.Login, mailbox string) (string, error) {
	password := login.Password
	if mailbox != "" && wellFormed(password) {
		if id, ok := p.cache.get(p.cache.keyOf(mailbox, password), p.now()); ok {
			p.touch(mailbox, id)
			return id, nil
		}
	}
	name := normalize(login.Username)
	src, hasSrc := sourceOf(login.Remote)
	a := p.throttle.admit(name, src, hasSrc, mailbox != "", p.cache.keyOf(name, password), p.now())
	if a.refuse {
		a.delay += time.Duration(p.lastArgon.Load())
	}
	if a.delay > 0 {
		if err := p.sleep(ctx, a.delay); err != nil {
			p.throttle.settle(a, false, p.now())
			return "", errBusy(err)
		}
	}
	if a.refuse {
		return "", &proxy.LoginError{Kind: proxy.KindCredentials, Reason: reasonCredentials, Err: throttledError(a.reason)}
	}
	id, err := p.verifyAdmitted(ctx, mailbox, password)
	p.throttle.settle(a, isCredentialsErr(err), p.now())
	return id, err
}

func isCredentialsErr(err error) bool {
	var le *proxy.LoginError
	return errors.As(err, &le) && le.Kind == proxy.KindCredentials
}

// verifyAdmitted checks an attempt the throttle let through.
func (p *passwords) verifyAdmitted(ctx context.Context, mailbox, password string) (string, error) {
	if !wellFormed(password) {
		return "", errCredentials("not an app password")
	}
	if mailbox == "" {
		if _, err := p.compute(ctx, p.dummy, password); err != nil {
			return "", err
		}
		return "", errCredentials("unknown user")
	}
	k := p.cache.keyOf(mailbox, password)
	// Proven by another login while this one waited?
	if id, ok := p.cache.get(k, p.now()); ok {
		p.touch(mailbox, id)
		return id, nil
	}
	for {
		// Clients that log in together with the same password share one
		// check, run under the first one's ctx.
		ch := p.flights.DoChan(string(k[:]), func() (any, error) { return p.check(ctx, mailbox, password, k) })
		select {
		case r := <-ch:
			if r.Err != nil {
				if isContextErr(r.Err) && ctx.Err() == nil {
					continue // the leader gave up, we did not
				}
				return "", r.Err
			}
			id := r.Val.(string)
			p.touch(mailbox, id)
			return id, nil
		case <-ctx.Done():
			return "", errBusy(ctx.Err())
		}
	}
}

func (p *passwords) check(ctx context.Context, mailbox, password string, k cacheKey) (any, error) {
	gen := p.cache.generation()
	id := password[:appPasswordIDLen]
	h, known := p.dummy, false
	rec, err := p.store.AppPassword(ctx, mailbox, id)
	switch {
	case err == nil:
		if ph, err := parsePHC(rec.Hash); err != nil {
			p.log.Error("stored app password hash is unreadable; revoke and reissue it", "account", mailbox, "id", id, "err", err)
		} else {
			h, known = ph, true
		}
	case errors.Is(err, store.ErrNotFound):
	default:
		return nil, &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: "temporary failure, try again later", Err: err}
	}
	ok, err := p.compute(ctx, h, password)
	switch {
	case err != nil:
		return nil, err
	case !known:
		return nil, errCredentials("unknown app password " + id)
	case !ok:
		return nil, errCredentials("wrong app password for " + id)
	}
	now := p.now()
	p.cache.put(k, gen, cacheEntry{mailbox: mailbox, id: id, expires: now.Add(successTTL)}, now)
	// This path already paid for argon2: record the use now, so that `list`
	// right after a legacy system's first login shows it.
	p.markTouched(mailbox, id, now)
	p.record(ctx, mailbox, id, now)
	return id, nil
}

// compute runs argon2 for h under the semaphore.
func (p *passwords) compute(ctx context.Context, h phcHash, password string) (bool, error) {
	if err := p.acquire(ctx); err != nil {
		return false, err
	}
	defer p.release()
	start := time.Now()
	ok := h.matches(password)
	p.lastArgon.Store(int64(time.Since(start)))
	return ok, nil
}

// hash makes a new hash under the semaphore.
func (p *passwords) hash(ctx context.Context, password string) (phcHash, error) {
	if err := p.acquire(ctx); err != nil {
		return phcHash{}, err
	}
	defer p.release()
	return newPHC(password, p.params), nil
}

// acquire takes an argon2 slot, waiting at most maxWait.
func (p *passwords) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return errBusy(err)
	}
	select {
	case p.sem <- struct{}{}:
	default:
		t := time.NewTimer(p.maxWait)
		defer t.Stop()
		select {
		case p.sem <- struct{}{}:
		case <-t.C:
			return errBusy(errArgonQueue)
		case <-ctx.Done():
			return errBusy(ctx.Err())
		}
	}
	p.hashes.Add(1)
	if p.onHash != nil {
		p.onHash()
	}
	return nil
}

// release gives back an argon2 slot, once the run's buffer is collected
// (see argonbound.go).
func (p *passwords) release() {
	if p.collect != nil {
		p.collect()
	}
	<-p.sem
}

// touch records a use in the store, in the background and at most once a
// minute per password.
func (p *passwords) touch(mailbox, id string) {
	now := p.now()
	if !p.markTouched(mailbox, id, now) {
		return
	}
	p.life.goFunc(func() {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		p.record(ctx, mailbox, id, now)
	})
}

// markTouched reports whether a use at now is worth recording.
func (p *passwords) markTouched(mailbox, id string, now time.Time) bool {
	key := mailbox + "\x00" + id
	p.touchMu.Lock()
	defer p.touchMu.Unlock()
	if last, ok := p.touched[key]; ok && now.Sub(last) < touchEvery {
		return false
	}
	p.touched[key] = now
	return true
}

func (p *passwords) record(ctx context.Context, mailbox, id string, now time.Time) {
	if err := p.store.TouchAppPassword(ctx, mailbox, id, now.UTC()); err != nil && !errors.Is(err, store.ErrNotFound) {
		p.log.Warn("cannot record app password use", "account", mailbox, "id", id, "err", err)
	}
}

func (p *passwords) revoke(mailbox, id string) {
	p.cache.revoke(mailbox, id)
	p.touchMu.Lock()
	delete(p.touched, mailbox+"\x00"+id)
	p.touchMu.Unlock()
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
