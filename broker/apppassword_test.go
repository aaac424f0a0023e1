package broker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
)

func TestAppPasswordFormat(t *testing.T) {
	e := newEnv(t)
	e.realArgon = true
	b := e.broker(t)
	info, pw, err := b.AddAppPassword(context.Background(), " Alice@Contoso.example ", "scanner")
	if err != nil {
		t.Fatalf("AddAppPassword: %v", err)
	}
	if !wellFormed(pw) {
		t.Fatalf("password %q is not 32 characters of a-z2-7", pw)
	}
	if info.ID != pw[:appPasswordIDLen] || info.Mailbox != mailboxA || info.Label != "scanner" || !info.CreatedAt.Equal(e.clock.Now()) {
		t.Fatalf("got info %+v, want ID %s of %s labelled scanner", info, pw[:6], mailboxA)
	}
	rec, err := e.store.AppPassword(context.Background(), mailboxA, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rec.Hash, "$argon2id$v=19$m=19456,t=2,p=1$") || strings.Contains(rec.Hash, pw[6:]) {
		t.Fatalf("stored hash %q is not an argon2id PHC string", rec.Hash)
	}
}

func TestAppPasswordUnknownAccount(t *testing.T) {
	b := newEnv(t).broker(t)
	_, _, err := b.AddAppPassword(context.Background(), "carol@contoso.example", "")
	if err == nil || !strings.Contains(err.Error(), "carol@contoso.example") {
		t.Fatalf("got %v, want an error naming carol@contoso.example", err)
	}
}

func TestAppPasswordVerify(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	hashes := func() int64 { return b.pw.hashes.Load() }

	mustLogin(t, b, "ALICE", pw)
	if got := hashes(); got != 2 { // one to issue, one to verify
		t.Fatalf("got %d argon2 runs, want 2", got)
	}
	mustLogin(t, b, "alice", pw)
	if got := hashes(); got != 2 {
		t.Fatalf("repeat login ran argon2: got %d runs, want 2", got)
	}

	// Every wrong credential costs one hash and gives the same answer.
	wrongSecret := pw[:appPasswordIDLen] + strings.Repeat("a", appPasswordLen-appPasswordIDLen)
	unknownID := "zzzzzz" + pw[appPasswordIDLen:]
	tests := []struct{ name, user, password string }{
		{"wrong password", "alice", wrongSecret},
		{"unknown id", "alice", unknownID},
		{"unknown user", "mallory", pw},
		{"mailbox is not the login", mailboxA, pw},
		{"other account", mailboxB, pw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := hashes()
			_, err := login(t, b, tt.user, tt.password)
			le := wantKind(t, err, proxy.KindCredentials)
			if le.Reason != reasonCredentials {
				t.Fatalf("got reason %q, want %q", le.Reason, reasonCredentials)
			}
			if got := hashes() - before; got != 1 {
				t.Fatalf("got %d argon2 runs, want 1 (the same cost as any other failure)", got)
			}
		})
	}

	// Malformed passwords cannot be app passwords: no hash needed.
	before := hashes()
	for _, p := range []string{"", "password", strings.ToUpper(pw), pw + "a"} {
		_, err := login(t, b, "alice", p)
		wantKind(t, err, proxy.KindCredentials)
	}
	if hashes() != before {
		t.Fatalf("malformed passwords ran argon2")
	}
}

func TestAppPasswordRevoke(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	ctx := context.Background()
	pw := e.addPassword(t, b, mailboxA)
	other := e.addPassword(t, b, mailboxA)
	mustLogin(t, b, "alice", pw) // now remembered
	mustLogin(t, b, "alice", other)

	if err := b.RevokeAppPassword(ctx, "ALICE@contoso.example", strings.ToUpper(pw[:6])); err != nil {
		t.Fatalf("RevokeAppPassword: %v", err)
	}
	_, err := login(t, b, "alice", pw)
	wantKind(t, err, proxy.KindCredentials)
	mustLogin(t, b, "alice", other)

	if err := b.RevokeAppPassword(ctx, mailboxA, pw[:6]); err == nil || !strings.Contains(err.Error(), pw[:6]) {
		t.Fatalf("second revoke: got %v, want an error naming the ID", err)
	}
}

func TestAppPasswordList(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	ctx := context.Background()
	a1 := e.addPassword(t, b, mailboxA)
	e.clock.Advance(time.Second)
	a2 := e.addPassword(t, b, mailboxA)
	bb := e.addPassword(t, b, mailboxB)

	tests := []struct {
		mailbox string
		want    []string
	}{
		{mailboxA, []string{a1[:6], a2[:6]}},
		{"BOB@contoso.example", []string{bb[:6]}},
		{"", []string{a1[:6], a2[:6], bb[:6]}},
		{"nobody@contoso.example", nil},
	}
	for _, tt := range tests {
		list, err := b.AppPasswords(ctx, tt.mailbox)
		if err != nil {
			t.Fatalf("AppPasswords(%q): %v", tt.mailbox, err)
		}
		var got []string
		for _, i := range list {
			got = append(got, i.ID)
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("AppPasswords(%q) = %v, want %v", tt.mailbox, got, tt.want)
		}
	}
}

func TestAppPasswordLastUsed(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	pw := e.addPassword(t, b, mailboxA)
	id := pw[:6]
	lastUsed := func() time.Time {
		list, err := b.AppPasswords(context.Background(), mailboxA)
		if err != nil || len(list) != 1 {
			t.Fatalf("AppPasswords = %v, %v", list, err)
		}
		return list[0].LastUsed
	}
	if !lastUsed().IsZero() {
		t.Fatalf("new password has a last-used time")
	}

	t0 := e.clock.Now()
	mustLogin(t, b, "alice", pw)
	waitUntil(t, &e.store.changed, "last use recorded", func() bool { return lastUsed().Equal(t0) })

	// Within a minute: remembered, but no store write.
	e.clock.Advance(30 * time.Second)
	mustLogin(t, b, "alice", pw)
	b.pw.touchMu.Lock()
	touched := b.pw.touched[mailboxA+"\x00"+id]
	b.pw.touchMu.Unlock()
	if !touched.Equal(t0) {
		t.Fatalf("a login within a minute scheduled a write (last touch %v, want %v)", touched, t0)
	}

	e.clock.Advance(31 * time.Second)
	mustLogin(t, b, "alice", pw)
	t2 := e.clock.Now()
	waitUntil(t, &e.store.changed, "second use recorded", func() bool { return lastUsed().Equal(t2) })
	if n := e.store.touchCount(); n != 2 {
		t.Fatalf("got %d last-used writes, want 2", n)
	}
}

// A flood of wrong passwords runs at most cap(sem) hashes at once, and a
// caller that gives up while waiting leaves at once.
func TestWrongPasswordFloodIsBounded(t *testing.T) {
	e := newEnv(t)
	const limit, flood = 2, 20
	entered, release := make(chan struct{}), make(chan struct{})
	var inside, most atomic.Int32
	b := e.broker(t, func(b *Broker) {
		b.pw.sem = make(chan struct{}, limit)
		b.pw.onHash = func() {
			n := inside.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			entered <- struct{}{}
			<-release
			inside.Add(-1)
		}
	})

	var wg sync.WaitGroup
	errs := make(chan error, flood)
	for i := range flood {
		wg.Go(func() {
			// An unknown name each, so that the throttle lets all through:
			// hashed against the dummy.
			_, err := b.Authenticate(context.Background(), &proxy.Login{Username: fmt.Sprint("mallory", i), Password: newAppPassword()})
			errs <- err
		})
	}
	for range limit {
		<-entered
	}

	// The semaphore is full: a caller that gives up is not queued forever.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := b.Authenticate(ctx, &proxy.Login{Username: "alice", Password: newAppPassword()})
		done <- err
	}()
	cancel()
	wantKind(t, <-done, proxy.KindUnavailable)

	for range flood - limit {
		release <- struct{}{}
		<-entered
	}
	for range limit {
		release <- struct{}{}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		wantKind(t, err, proxy.KindCredentials)
	}
	if got := most.Load(); got != limit {
		t.Fatalf("got %d concurrent hashes at most, want %d", got, limit)
	}
}
