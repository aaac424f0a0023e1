package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func TestOpenCreatesPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "broker")
	path := filepath.Join(dir, "broker.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{{dir, 0o700}, {path, 0o600}} {
		info, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != c.mode {
			t.Fatalf("%s: got mode %04o, want %04o", c.path, got, c.mode)
		}
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	second, err := Open(path)
	if err == nil {
		second.Close()
		db.Close()
		t.Fatal("second Open succeeded while the first is open")
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("second Open took %v, want about %v", elapsed, lockTimeout)
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("got %v, want ErrLocked", err)
	}
	if want := "database " + path + " is in use by another broker process"; !strings.Contains(err.Error(), want) {
		t.Fatalf("got %q, want it to contain %q", err, want)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = Open(path)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	db.Close()
}

func setSchemaVersion(t *testing.T, path string, version uint64) {
	t.Helper()
	raw, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	err = raw.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(metaBucket).Put(schemaKey, binary.BigEndian.AppendUint64(nil, version))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	setSchemaVersion(t, path, schemaVersion+1)
	// Twice: a refused Open must not keep the lock.
	for range 2 {
		db, err := Open(path)
		if err == nil {
			db.Close()
			t.Fatal("Open accepted a newer schema")
		}
		if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), "written by a newer broker") {
			t.Fatalf("got %v, want ErrNewerSchema", err)
		}
	}
}

func TestForeignDatabaseRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	raw, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = raw.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket(metaBucket)
		return err
	})
	raw.Close()
	if err != nil {
		t.Fatal(err)
	}
	if db, err := Open(path); err == nil {
		db.Close()
		t.Fatal("Open accepted a database without a schema version")
	}
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	ctx := context.Background()
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.PutAccount(ctx, &Account{Mailbox: "a@contoso.com", Token: []byte("sealed")}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a, err := db.Account(ctx, "a@contoso.com")
	if err != nil || string(a.Token) != "sealed" {
		t.Fatalf("got %+v, %v, want the token written before reopening", a, err)
	}
}

func TestBackup(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	if err := db.PutAccount(ctx, &Account{Mailbox: "a@contoso.com", Token: []byte("sealed")}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	n, err := db.Backup(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) || n == 0 {
		t.Fatalf("Backup returned %d, wrote %d bytes", n, buf.Len())
	}
	path := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	restored, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	a, err := restored.Account(ctx, "a@contoso.com")
	if err != nil || string(a.Token) != "sealed" {
		t.Fatalf("restored: got %+v, %v", a, err)
	}
}

func TestCanceledContext(t *testing.T) {
	db := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := map[string]error{}
	_, calls["Account"] = db.Account(ctx, "a@x.com")
	_, calls["Accounts"] = db.Accounts(ctx)
	calls["PutAccount"] = db.PutAccount(ctx, &Account{Mailbox: "a@x.com"})
	calls["DeleteAccount"] = db.DeleteAccount(ctx, "a@x.com")
	_, calls["AppPassword"] = db.AppPassword(ctx, "a@x.com", "1")
	_, calls["AppPasswords"] = db.AppPasswords(ctx, "")
	calls["AddAppPassword"] = db.AddAppPassword(ctx, &AppPassword{Mailbox: "a@x.com", ID: "1"})
	calls["DeleteAppPassword"] = db.DeleteAppPassword(ctx, "a@x.com", "1")
	calls["TouchAppPassword"] = db.TouchAppPassword(ctx, "a@x.com", "1", time.Now())
	for name, err := range calls {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: got %v, want context.Canceled", name, err)
		}
	}
	if list, err := db.Accounts(context.Background()); err != nil || len(list) != 0 {
		t.Fatalf("got %v, %v after canceled writes, want nothing stored", list, err)
	}
}
