package store

import (
	"context"
	"path/filepath"
	"testing"
)

func openTemp(t *testing.T) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func addPassword(t *testing.T, db *DB, p AppPassword) {
	t.Helper()
	if err := db.AddAppPassword(context.Background(), &p); err != nil {
		t.Fatalf("AddAppPassword(%s, %s): %v", p.Mailbox, p.ID, err)
	}
}
