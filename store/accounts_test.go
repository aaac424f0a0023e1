package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestAccountRoundTrip(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	updated := time.Date(2025, 3, 4, 5, 6, 7, 890123456, time.FixedZone("CET", 3600))
	in := &Account{Mailbox: "Support@Contoso.com", Token: []byte{0, 1, 2, 0xff}, UpdatedAt: updated}
	if err := db.PutAccount(ctx, in); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"support@contoso.com", "SUPPORT@CONTOSO.COM"} {
		got, err := db.Account(ctx, name)
		if err != nil {
			t.Fatalf("Account(%q): %v", name, err)
		}
		if got.Mailbox != "support@contoso.com" || string(got.Token) != string(in.Token) || !got.UpdatedAt.Equal(updated) {
			t.Fatalf("Account(%q): got %+v, want %+v with the mailbox lower-cased", name, got, in)
		}
	}
	replaced := &Account{Mailbox: "support@contoso.com"}
	if err := db.PutAccount(ctx, replaced); err != nil {
		t.Fatal(err)
	}
	got, err := db.Account(ctx, "support@contoso.com")
	if err != nil || got.Token != nil || !got.UpdatedAt.IsZero() {
		t.Fatalf("after replacing: got %+v, %v, want no token", got, err)
	}
}

func TestAccountsOrdered(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	for _, m := range []string{"c@x.com", "A@x.com", "b@x.com", "a.b@x.com"} {
		if err := db.PutAccount(ctx, &Account{Mailbox: m}); err != nil {
			t.Fatal(err)
		}
	}
	list, err := db.Accounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range list {
		got = append(got, a.Mailbox)
	}
	want := []string{"a.b@x.com", "a@x.com", "b@x.com", "c@x.com"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func TestAccountNotFound(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	if _, err := db.Account(ctx, "nobody@x.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Account: got %v, want ErrNotFound", err)
	}
	if err := db.DeleteAccount(ctx, "nobody@x.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteAccount: got %v, want ErrNotFound", err)
	}
	if err := db.PutAccount(ctx, &Account{Mailbox: "a@x.com"}); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteAccount(ctx, "A@X.com"); err != nil {
		t.Fatalf("DeleteAccount: %v", err)
	}
	if _, err := db.Account(ctx, "a@x.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Account after delete: got %v, want ErrNotFound", err)
	}
}

func TestAccountNotAliased(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	token := []byte("sealed-token")
	if err := db.PutAccount(ctx, &Account{Mailbox: "a@x.com", Token: token}); err != nil {
		t.Fatal(err)
	}
	token[0] = 'X'
	first, err := db.Account(ctx, "a@x.com")
	if err != nil {
		t.Fatal(err)
	}
	first.Token[1] = 'Y'
	list, err := db.Accounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	list[0].Token[2] = 'Z'
	// Writes that reuse the pages the earlier values came from.
	for range 100 {
		if err := db.PutAccount(ctx, &Account{Mailbox: "a@x.com", Token: []byte("other-token!")}); err != nil {
			t.Fatal(err)
		}
	}
	if string(first.Token) != "sYaled-token" || string(list[0].Token) != "seZled-token" {
		t.Fatalf("values changed after their transaction: %q, %q", first.Token, list[0].Token)
	}
}

func TestAccountInvalidInput(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	errs := map[string]error{
		"Account empty":       func() error { _, err := db.Account(ctx, ""); return err }(),
		"PutAccount nil":      db.PutAccount(ctx, nil),
		"PutAccount empty":    db.PutAccount(ctx, &Account{}),
		"PutAccount NUL":      db.PutAccount(ctx, &Account{Mailbox: "a\x00b"}),
		"DeleteAccount empty": db.DeleteAccount(ctx, ""),
	}
	for name, err := range errs {
		if err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: got %v, want an invalid-input error", name, err)
		}
	}
}
