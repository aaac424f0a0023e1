package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)

func TestAppPasswordRoundTrip(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	in := AppPassword{Mailbox: "Support@Contoso.com", ID: "k3x9", Label: "scanner", Hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", CreatedAt: t0}
	addPassword(t, db, in)
	got, err := db.AppPassword(ctx, "SUPPORT@contoso.com", "k3x9")
	if err != nil {
		t.Fatal(err)
	}
	want := in
	want.Mailbox = "support@contoso.com"
	if got.Mailbox != want.Mailbox || got.ID != want.ID || got.Label != want.Label || got.Hash != want.Hash ||
		!got.CreatedAt.Equal(want.CreatedAt) || !got.LastUsed.IsZero() {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := db.AppPassword(ctx, "support@contoso.com", "K3X9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ids are case-sensitive: got %v, want ErrNotFound", err)
	}
}

func TestAppPasswordExists(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	addPassword(t, db, AppPassword{Mailbox: "a@x.com", ID: "1", Hash: "first"})
	err := db.AddAppPassword(ctx, &AppPassword{Mailbox: "A@X.COM", ID: "1", Hash: "second"})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("got %v, want ErrExists", err)
	}
	got, err := db.AppPassword(ctx, "a@x.com", "1")
	if err != nil || got.Hash != "first" {
		t.Fatalf("got %+v, %v, want the first hash kept", got, err)
	}
	addPassword(t, db, AppPassword{Mailbox: "b@x.com", ID: "1", Hash: "other mailbox"})
}

func TestAppPasswordsOrdered(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	for _, p := range []AppPassword{
		{Mailbox: "b@x.com", ID: "a", CreatedAt: t0.Add(2 * time.Hour)},
		{Mailbox: "b@x.com", ID: "z", CreatedAt: t0},
		{Mailbox: "a.b@x.com", ID: "m", CreatedAt: t0.Add(5 * time.Hour)},
		{Mailbox: "A@x.com", ID: "q", CreatedAt: t0.Add(time.Hour)},
		{Mailbox: "a@x.com", ID: "p", CreatedAt: t0.Add(time.Hour)},
		{Mailbox: "b@x.com", ID: "c", CreatedAt: t0.Add(time.Hour)},
	} {
		addPassword(t, db, p)
	}
	tests := []struct {
		mailbox string
		want    string
	}{
		{"", "a.b@x.com/m a@x.com/p a@x.com/q b@x.com/z b@x.com/c b@x.com/a"},
		{"B@x.com", "b@x.com/z b@x.com/c b@x.com/a"},
		{"a@x.com", "a@x.com/p a@x.com/q"},
		{"a.b@x.com", "a.b@x.com/m"},
		{"a", ""},
		{"nobody@x.com", ""},
	}
	for _, tt := range tests {
		list, err := db.AppPasswords(ctx, tt.mailbox)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for i, p := range list {
			if i > 0 {
				got += " "
			}
			got += p.Mailbox + "/" + p.ID
		}
		if got != tt.want {
			t.Fatalf("AppPasswords(%q): got %q, want %q", tt.mailbox, got, tt.want)
		}
	}
}

func TestAppPasswordNotFound(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	addPassword(t, db, AppPassword{Mailbox: "a@x.com", ID: "1"})
	if _, err := db.AppPassword(ctx, "a@x.com", "2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AppPassword: got %v, want ErrNotFound", err)
	}
	if err := db.DeleteAppPassword(ctx, "b@x.com", "1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteAppPassword: got %v, want ErrNotFound", err)
	}
	if err := db.TouchAppPassword(ctx, "a@x.com", "2", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("TouchAppPassword: got %v, want ErrNotFound", err)
	}
	if err := db.DeleteAppPassword(ctx, "A@x.com", "1"); err != nil {
		t.Fatalf("DeleteAppPassword: %v", err)
	}
	if _, err := db.AppPassword(ctx, "a@x.com", "1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AppPassword after delete: got %v, want ErrNotFound", err)
	}
}

func TestTouchAppPasswordKeepsLatest(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	addPassword(t, db, AppPassword{Mailbox: "a@x.com", ID: "1", Label: "kept", CreatedAt: t0})
	for _, c := range []struct {
		at, want time.Time
	}{
		{t0.Add(time.Hour), t0.Add(time.Hour)},
		{t0.Add(time.Minute), t0.Add(time.Hour)}, // late report of an earlier use
		{t0.Add(2 * time.Hour), t0.Add(2 * time.Hour)},
	} {
		if err := db.TouchAppPassword(ctx, "A@x.com", "1", c.at); err != nil {
			t.Fatal(err)
		}
		got, err := db.AppPassword(ctx, "a@x.com", "1")
		if err != nil {
			t.Fatal(err)
		}
		if !got.LastUsed.Equal(c.want) || got.Label != "kept" || !got.CreatedAt.Equal(t0) {
			t.Fatalf("touch at %v: got %+v, want last used %v", c.at, got, c.want)
		}
	}
}

func TestAppPasswordInvalidInput(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	errs := map[string]error{
		"Add nil":         db.AddAppPassword(ctx, nil),
		"Add no mailbox":  db.AddAppPassword(ctx, &AppPassword{ID: "1"}),
		"Add no id":       db.AddAppPassword(ctx, &AppPassword{Mailbox: "a@x.com"}),
		"Add NUL mailbox": db.AddAppPassword(ctx, &AppPassword{Mailbox: "a\x00@x.com", ID: "1"}),
		"Add NUL id":      db.AddAppPassword(ctx, &AppPassword{Mailbox: "a@x.com", ID: "1\x002"}),
		"Get no id":       func() error { _, err := db.AppPassword(ctx, "a@x.com", ""); return err }(),
		"Get no mailbox":  func() error { _, err := db.AppPassword(ctx, "", "1"); return err }(),
		"Delete no id":    db.DeleteAppPassword(ctx, "a@x.com", ""),
		"Touch no id":     db.TouchAppPassword(ctx, "a@x.com", "", t0),
		"List NUL":        func() error { _, err := db.AppPasswords(ctx, "a\x00"); return err }(),
	}
	for name, err := range errs {
		if err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: got %v, want an invalid-input error", name, err)
		}
	}
	if list, err := db.AppPasswords(ctx, ""); err != nil || len(list) != 0 {
		t.Fatalf("got %v, %v, want nothing stored", list, err)
	}
}

func TestAppPasswordNotAliased(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	p := &AppPassword{Mailbox: "a@x.com", ID: "1", Label: "label", Hash: "hash"}
	if err := db.AddAppPassword(ctx, p); err != nil {
		t.Fatal(err)
	}
	p.Label = "changed"
	got, err := db.AppPassword(ctx, "a@x.com", "1")
	if err != nil || got.Label != "label" {
		t.Fatalf("got %+v, %v, want the label as added", got, err)
	}
	got.Hash = "changed"
	again, err := db.AppPassword(ctx, "a@x.com", "1")
	if err != nil || again.Hash != "hash" {
		t.Fatalf("got %+v, %v, want the hash as added", again, err)
	}
}

func TestConcurrentUse(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	const workers, perWorker = 8, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			mailbox := fmt.Sprintf("user%d@x.com", w)
			for i := range perWorker {
				id := fmt.Sprint(i)
				err := errors.Join(
					db.AddAppPassword(ctx, &AppPassword{Mailbox: mailbox, ID: id, CreatedAt: t0.Add(time.Duration(i))}),
					db.TouchAppPassword(ctx, mailbox, id, t0.Add(time.Hour)),
					db.PutAccount(ctx, &Account{Mailbox: mailbox, Token: []byte(id)}),
				)
				if _, lerr := db.AppPasswords(ctx, ""); lerr != nil {
					err = errors.Join(err, lerr)
				}
				if _, aerr := db.Accounts(ctx); aerr != nil {
					err = errors.Join(err, aerr)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	list, err := db.AppPasswords(ctx, "")
	if err != nil || len(list) != workers*perWorker {
		t.Fatalf("got %d app passwords, %v, want %d", len(list), err, workers*perWorker)
	}
	accounts, err := db.Accounts(ctx)
	if err != nil || len(accounts) != workers {
		t.Fatalf("got %d accounts, %v, want %d", len(accounts), err, workers)
	}
	for _, a := range accounts {
		if string(a.Token) != fmt.Sprint(perWorker-1) {
			t.Fatalf("%s: got token %q, want the last one written", a.Mailbox, a.Token)
		}
	}
}
