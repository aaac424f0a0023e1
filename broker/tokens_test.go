package broker

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
)

// An expired token and 50 logins at once: one token request, 50 successes.
func TestConcurrentLoginsShareOneRequest(t *testing.T) {
	e := newEnv(t)
	const n = 50
	waiting := make(chan struct{}, n)
	b := e.broker(t, func(b *Broker) { b.tokens.onWait = func() { waiting <- struct{}{} } })
	pw := e.addPassword(t, b, mailboxA)
	first := mustLogin(t, b, "alice", pw)
	<-waiting

	e.clock.Advance(2 * time.Hour)
	e.entra.block()
	var wg sync.WaitGroup
	toks := make(chan string, n)
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			up, err := b.Authenticate(ctx, &proxy.Login{Username: "alice", Password: pw})
			if err != nil {
				errs <- err
				return
			}
			_, ir, _ := up.SASL.Start()
			toks <- string(ir)
		})
	}
	for range n {
		<-waiting // every login waits on the one request
	}
	waitUntil(t, &e.entra.changed, "the request arrived", func() bool { return e.entra.count() == 2 })
	e.entra.release()
	wg.Wait()
	close(errs)
	close(toks)
	for err := range errs {
		t.Fatalf("login failed: %v", err)
	}
	second := e.entra.tokens()[1]
	got := 0
	for ir := range toks {
		if !strings.Contains(ir, second) || strings.Contains(ir, first) {
			t.Fatalf("a login got %q, want the new token", ir)
		}
		got++
	}
	if got != n || e.entra.count() != 2 {
		t.Fatalf("got %d logins and %d token requests, want %d and 2", got, e.entra.count(), n)
	}
}

// While a valid token is cached, a failing, hanging refresh does not delay
// logins, and the refresher retries with growing backoff.
func TestRefreshFailureKeepsServing(t *testing.T) {
	e := newEnv(t)
	e.cfg.Accounts = e.cfg.Accounts[:1] // so every request is alice's
	var passes atomic.Int64
	var passed signal
	b := e.broker(t, func(b *Broker) {
		b.tokens.onPass = func() { passes.Add(1); passed.notify() }
	})
	pw := e.addPassword(t, b, mailboxA)
	b.Start()
	waitUntil(t, &e.store.changed, "the warm-up token is stored", func() bool { return e.store.token(mailboxA) != nil })
	var old string
	state(b, mailboxA, func(a *signIn) { old = a.tok.AccessToken })

	e.entra.failWith(http.StatusServiceUnavailable, "Service Unavailable")
	e.entra.block()
	e.clock.Advance(45 * time.Minute) // inside the refresh window (20 min of 60)
	if tok := mustLogin(t, b, "alice", pw); tok != old {
		t.Fatalf("got token %q, want the cached %q", tok, old)
	}
	waitUntil(t, &e.entra.changed, "the refresh is sent", func() bool { return e.entra.count() == 2 })
	if tok := mustLogin(t, b, "alice", pw); tok != old {
		t.Fatalf("login during the hanging refresh got %q, want %q", tok, old)
	}
	e.entra.release()

	for attempt, lo := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		attempt++
		var retryIn time.Duration
		waitUntil(t, &passed, "the failure is recorded", func() bool {
			ok := false
			state(b, mailboxA, func(a *signIn) {
				ok = a.done == nil && a.failures == attempt
				retryIn = a.retryAt.Sub(e.clock.Now())
			})
			return ok
		})
		if retryIn < lo || retryIn > 2*lo {
			t.Fatalf("attempt %d: retry in %v, want %v to %v", attempt, retryIn, lo, 2*lo)
		}
		// Not yet due: neither the refresher nor a login sends a request.
		p := passes.Load()
		b.tokens.kick()
		waitUntil(t, &passed, "a refresher pass", func() bool { return passes.Load() > p })
		if tok := mustLogin(t, b, "alice", pw); tok != old {
			t.Fatalf("login in backoff got %q, want %q", tok, old)
		}
		state(b, mailboxA, func(a *signIn) {
			if a.done != nil || a.failures != attempt {
				t.Fatalf("a request was sent before the backoff ended")
			}
		})
		if s := b.AccountStatus(mailboxA); s.State != StateOK || !strings.Contains(s.Explanation, "HTTP 503") {
			t.Fatalf("got status %+v, want ok with the refresh failure explained", s)
		}

		if attempt == 3 {
			e.entra.failWith(0, "")
		}
		before := e.entra.count()
		e.clock.Advance(retryIn)
		b.tokens.kick()
		waitUntil(t, &e.entra.changed, "the retry", func() bool { return e.entra.count() == before+1 })
	}
	waitUntil(t, &passed, "the new token", func() bool { return b.AccountStatus(mailboxA).Explanation == "" })
	if tok := mustLogin(t, b, "alice", pw); tok == old {
		t.Fatalf("still serving the old token after a successful refresh")
	}
}

// A permanent error fails logins at once with KindAccount, is logged once,
// and is retried slowly in the background until an admin fixes it.
func TestPermanentErrorNeedsAdmin(t *testing.T) {
	e := newEnv(t)
	e.cfg.Accounts = e.cfg.Accounts[:1]
	var passed signal
	b := e.broker(t, func(b *Broker) { b.tokens.onPass = passed.notify })
	pw := e.addPassword(t, b, mailboxA)
	e.entra.failWith(http.StatusUnauthorized, aadstsBody(7000215, "invalid_client", "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID."))

	_, err := login(t, b, "alice", pw)
	le := wantKind(t, err, proxy.KindAccount)
	if le.Reason != reasonNeedsAdmin {
		t.Fatalf("got reason %q, want %q", le.Reason, reasonNeedsAdmin)
	}
	for range 10 {
		_, err := login(t, b, "alice", pw)
		wantKind(t, err, proxy.KindAccount)
	}
	if n := e.entra.count(); n != 1 {
		t.Fatalf("got %d token requests for 11 logins, want 1", n)
	}
	const explained = "often the secret's ID was pasted instead of its Value"
	if n := strings.Count(e.logs.String(), explained); n != 1 {
		t.Fatalf("explanation logged %d times, want once:\n%s", n, e.logs)
	}
	s := b.AccountStatus(mailboxA)
	if s.State != StateFailing || !strings.Contains(s.Explanation, explained) || !strings.Contains(s.Explanation, "trace_id=0000aaaa-0000") {
		t.Fatalf("got status %+v, want needs-admin with the explanation", s)
	}
	if d := s.NextAttempt.Sub(e.clock.Now()); d < permanentRetry || d > permanentRetry*11/10 {
		t.Fatalf("next attempt in %v, want about %v", d, permanentRetry)
	}

	b.Start()
	e.clock.Advance(permanentRetry * 11 / 10)
	b.tokens.kick()
	waitUntil(t, &passed, "the slow retry fails again", func() bool {
		return e.entra.count() == 2 && b.AccountStatus(mailboxA).NextAttempt.After(e.clock.Now())
	})
	if n := strings.Count(e.logs.String(), explained); n != 1 {
		t.Fatalf("unchanged explanation logged again: %d times:\n%s", n, e.logs)
	}

	e.entra.failWith(0, "") // the admin fixed the secret
	e.clock.Advance(permanentRetry * 11 / 10)
	b.tokens.kick()
	waitUntil(t, &passed, "recovery", func() bool { return b.AccountStatus(mailboxA).State == StateOK })
	mustLogin(t, b, "alice", pw)
	if !strings.Contains(e.logs.String(), "token request succeeded again") {
		t.Fatalf("recovery not logged")
	}
}

// A transient failure with no token fails the login as unavailable, and
// logins during the backoff fail at once without a request.
func TestTransientErrorWithoutToken(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	e.entra.failWith(http.StatusServiceUnavailable, "")
	_, err := login(t, b, "alice", pw)
	wantKind(t, err, proxy.KindUnavailable)
	_, err = login(t, b, "alice", pw)
	wantKind(t, err, proxy.KindUnavailable)
	if n := e.entra.count(); n != 1 {
		t.Fatalf("got %d token requests, want 1", n)
	}
	if s := b.AccountStatus(mailboxA); s.State != StateFailing {
		t.Fatalf("got state %s, want unavailable", s.State)
	}
}

func TestUnreachableEndpoint(t *testing.T) {
	e := newEnv(t)
	e.cfg.Apps[0].Authority = "http://127.0.0.1:1" // nothing listens
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	_, err := login(t, b, "alice", pw)
	le := wantKind(t, err, proxy.KindUnavailable)
	if !strings.Contains(le.Err.Error(), "outbound HTTPS") {
		t.Fatalf("got %v, want the network failure explained", le.Err)
	}
}

// The login's ctx bounds its wait; the request itself goes on.
func TestLoginGivesUpRequestContinues(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	e.entra.block()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := b.Authenticate(ctx, &proxy.Login{Username: "alice", Password: pw})
		done <- err
	}()
	waitUntil(t, &e.entra.changed, "the request arrived", func() bool { return e.entra.count() == 1 })
	cancel()
	wantKind(t, <-done, proxy.KindUnavailable)
	e.entra.release()
	waitUntil(t, &e.store.changed, "the token is stored", func() bool { return e.store.token(mailboxA) != nil })
	mustLogin(t, b, "alice", pw)
	if n := e.entra.count(); n != 1 {
		t.Fatalf("got %d token requests, want 1", n)
	}
}

// A login that finds the token in its refresh window starts a refresh
// without waiting for it.
func TestLoginStartsRefresh(t *testing.T) {
	e := newEnv(t)
	e.entra.setExpiresIn(4500) // not 3600: expires_in is honoured
	var fetched signal
	b := e.broker(t, func(b *Broker) { b.tokens.onFetch = fetched.notify })
	pw := e.addPassword(t, b, mailboxA)
	old := mustLogin(t, b, "alice", pw)
	if got, want := b.AccountStatus(mailboxA).AccessTokenExpires, e.clock.Now().Add(4500*time.Second); !got.Equal(want) {
		t.Fatalf("got expiry %v, want %v", got, want)
	}
	e.clock.Advance(45 * time.Minute) // 30 min left: not yet due (margin 25 min)
	mustLogin(t, b, "alice", pw)
	state(b, mailboxA, func(a *signIn) {
		if a.done != nil {
			t.Fatalf("refresh started %v before expiry", 30*time.Minute)
		}
	})
	e.clock.Advance(10 * time.Minute)
	e.entra.block()
	if tok := mustLogin(t, b, "alice", pw); tok != old {
		t.Fatalf("got %q, want the cached token", tok)
	}
	waitUntil(t, &e.entra.changed, "the refresh", func() bool { return e.entra.count() == 2 })
	e.entra.release()
	waitUntil(t, &fetched, "the new token", func() bool {
		var fresh bool
		state(b, mailboxA, func(a *signIn) { fresh = a.tok.AccessToken != old })
		return fresh
	})
	if tok := mustLogin(t, b, "alice", pw); tok == old {
		t.Fatalf("still the old token")
	}
}

func TestRefreshAt(t *testing.T) {
	obtained := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		lifetime, left time.Duration
	}{
		{60 * time.Minute, 20 * time.Minute},
		{75 * time.Minute, 25 * time.Minute},
		{90 * time.Minute, 30 * time.Minute},
		{24 * time.Minute, 10 * time.Minute}, // the 10-minute floor
		{10 * time.Minute, 5 * time.Minute},  // never in the first half
	}
	for _, tt := range tests {
		tok := &token{Obtained: obtained, Expiry: obtained.Add(tt.lifetime)}
		if got := tok.Expiry.Sub(refreshAt(tok)); got != tt.left {
			t.Errorf("lifetime %v: refresh with %v left, want %v", tt.lifetime, got, tt.left)
		}
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		n      int
		lo, hi time.Duration
	}{
		{1, time.Second, 2 * time.Second},
		{2, 2 * time.Second, 4 * time.Second},
		{5, 16 * time.Second, 32 * time.Second},
		{9, maxBackoff / 2, maxBackoff},
		{1000, maxBackoff / 2, maxBackoff},
	}
	for _, tt := range tests {
		for range 100 {
			if d := backoff(tt.n); d < tt.lo || d > tt.hi {
				t.Fatalf("backoff(%d) = %v, want %v to %v", tt.n, d, tt.lo, tt.hi)
			}
		}
	}
}

// A new Broker over the same store serves the stored token without a
// request, and the store never holds a token in clear.
func TestRestartUsesStoredToken(t *testing.T) {
	e := newEnv(t)
	b1 := e.broker(t)
	pw := e.addPassword(t, b1, mailboxA)
	tok := mustLogin(t, b1, "alice", pw)
	waitUntil(t, &e.store.changed, "the token is stored", func() bool { return e.store.token(mailboxA) != nil })
	b1.Close()

	if bytes.Contains(e.store.dump(), []byte(tok)) || bytes.Contains(e.store.dump(), []byte("access-")) {
		t.Fatalf("the store holds the token in clear")
	}
	e.clock.Advance(30 * time.Minute)
	b2 := e.broker(t)
	if got := mustLogin(t, b2, "alice", pw); got != tok {
		t.Fatalf("after restart got %q, want the stored %q", got, tok)
	}
	if n := e.entra.count(); n != 1 {
		t.Fatalf("got %d token requests, want 1", n)
	}

	// Expired while broker was down: a new one is requested.
	e.clock.Advance(time.Hour)
	b3 := e.broker(t)
	if got := mustLogin(t, b3, "alice", pw); got == tok {
		t.Fatalf("after expiry got the stored token")
	}
}

// A sealed token moved to another account's record does not open there.
func TestStoredTokenBoundToAccount(t *testing.T) {
	e := newEnv(t)
	b1 := e.broker(t)
	pwB := e.addPassword(t, b1, mailboxB)
	pwA := e.addPassword(t, b1, mailboxA)
	tokA := mustLogin(t, b1, "alice", pwA)
	waitUntil(t, &e.store.changed, "the token is stored", func() bool { return e.store.token(mailboxA) != nil })
	b1.Close()

	rec, _ := e.store.Account(context.Background(), mailboxA)
	rec.Mailbox = mailboxB
	if err := e.store.PutAccount(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	b2 := e.broker(t)
	if !strings.Contains(e.logs.String(), "ignoring stored token") {
		t.Fatalf("swapped blob not reported")
	}
	if got := mustLogin(t, b2, mailboxB, pwB); got == tokA {
		t.Fatalf("bob got alice's token")
	}
	if n := e.entra.count(); n != 2 {
		t.Fatalf("got %d token requests, want 2", n)
	}
	if got := mustLogin(t, b2, "alice", pwA); got != tokA {
		t.Fatalf("alice's stored token did not survive")
	}

	s := testSealer(t, 7)
	if _, err := s.Open(e.store.token(mailboxA), tokenAAD(mailboxB)); err == nil {
		t.Fatalf("a blob sealed for %s opens as %s", mailboxA, mailboxB)
	}
}

func TestUpstreamRejected(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	tok := mustLogin(t, b, "alice", pw)

	// A fresh token is not to blame: a mailbox permission is more likely.
	e.clock.Advance(10 * time.Second)
	b.UpstreamRejected(mailboxA, "NO AUTHENTICATE failed.")
	if got := mustLogin(t, b, "alice", pw); got != tok {
		t.Fatalf("a fresh token was dropped")
	}
	if !strings.Contains(e.logs.String(), "Add-MailboxPermission") {
		t.Fatalf("rejection of a fresh token not explained")
	}

	e.clock.Advance(5 * time.Minute)
	b.UpstreamRejected(mailboxA, "NO AUTHENTICATE failed.")
	if got := mustLogin(t, b, "alice", pw); got == tok {
		t.Fatalf("a rejected token is still served")
	}
	if n := e.entra.count(); n != 2 {
		t.Fatalf("got %d token requests, want 2", n)
	}
	if s := b.AccountStatus(mailboxA); s.UpstreamRejection != "NO AUTHENTICATE failed." {
		t.Fatalf("got status %+v, want the rejection", s)
	}
}

// Logs carry no token, client secret, app password or hash, whatever
// happens.
func TestLogsHoldNoSecrets(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	pwB := e.addPassword(t, b, mailboxB)
	mustLogin(t, b, "alice", pw)
	mustLogin(t, b, "alice", pw)
	login(t, b, "alice", pw[:6]+strings.Repeat("b", 26))
	login(t, b, "nobody", pw)
	e.clock.Advance(time.Hour)
	mustLogin(t, b, "alice", pw)
	e.clock.Advance(2 * time.Minute)
	b.UpstreamRejected(mailboxA, "NO AUTHENTICATE failed.")
	mustLogin(t, b, "alice", pw)
	e.entra.failWith(http.StatusUnauthorized, aadstsBody(7000215, "invalid_client", "Invalid client secret provided."))
	_, err := login(t, b, mailboxB, pwB)
	wantKind(t, err, proxy.KindAccount)
	b.RevokeAppPassword(context.Background(), mailboxA, pw[:6])
	b.Close()

	logs := e.logs.String()
	if !strings.Contains(logs, "needs administrator action") {
		t.Fatalf("the test did not exercise failure logging:\n%s", logs)
	}
	secrets := append(e.entra.tokens(), testSecret, pw, pw[6:], pwB)
	recs, _ := e.store.AppPasswords(context.Background(), "")
	for _, r := range recs {
		secrets = append(secrets, r.Hash, r.Hash[strings.LastIndex(r.Hash, "$")+1:])
	}
	if n := len(e.entra.tokens()); n != 3 {
		t.Fatalf("got %d tokens issued, want 3", n)
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("log contains secret %q", s)
		}
	}
}

func TestAccountStatus(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	if s := b.AccountStatus(mailboxA); s.State != StateRefreshing {
		t.Fatalf("got %s, want pending", s.State)
	}
	if s := b.AccountStatus("nobody@contoso.example"); s.State != StateUnknown {
		t.Fatalf("got %s, want unknown", s.State)
	}
	pw := e.addPassword(t, b, mailboxA)
	mustLogin(t, b, "alice", pw)
	list := b.AccountStatuses()
	if len(list) != 2 || list[0].Mailbox != mailboxA || list[0].State != StateOK || list[1].State != StateRefreshing {
		t.Fatalf("got %+v, want alice ok and bob pending", list)
	}
}

// Authenticate says when the token it hands out expires, so that an
// upstream session kept for reuse ends before it.
func TestAuthenticateSaysWhenTheTokenExpires(t *testing.T) {
	e := newEnv(t)
	e.entra.setExpiresIn(4500)
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up, err := b.Authenticate(ctx, &proxy.Login{Protocol: proxy.SMTP, Username: "alice", Password: pw})
	if err != nil {
		t.Fatal(err)
	}
	if want := e.clock.Now().Add(4500 * time.Second); !up.Expires.Equal(want) {
		t.Fatalf("Expires: got %v, want %v", up.Expires, want)
	}
	e.clock.Advance(10 * time.Minute)
	up, err = b.Authenticate(ctx, &proxy.Login{Protocol: proxy.SMTP, Username: "alice", Password: pw})
	if err != nil {
		t.Fatal(err)
	}
	if want := e.clock.Now().Add(4500*time.Second - 10*time.Minute); !up.Expires.Equal(want) {
		t.Fatalf("Expires of the cached token: got %v, want %v", up.Expires, want)
	}
}
