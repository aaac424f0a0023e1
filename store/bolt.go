package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// schemaVersion is the layout this code reads and writes. Raise it on any
// change an older broker would misread, so that the older one refuses the
// database instead of damaging it.
const schemaVersion = 1

var (
	metaBucket         = []byte("meta")
	accountsBucket     = []byte("accounts")
	appPasswordsBucket = []byte("app_passwords")

	schemaKey = []byte("schema")
)

// lockTimeout bounds the wait for another process's lock; bbolt would
// otherwise wait forever.
const lockTimeout = time.Second

// DB is the Store kept in a bbolt file.
type DB struct {
	db *bbolt.DB
}

var _ Store = (*DB)(nil)

// Open opens the database at path, creating it and its directory (mode
// 0700) if missing.
func Open(path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, &lockedError{path}
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := db.Update(initSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	return &DB{db: db}, nil
}

func initSchema(tx *bbolt.Tx) error {
	meta := tx.Bucket(metaBucket)
	if meta == nil {
		var err error
		if meta, err = tx.CreateBucket(metaBucket); err != nil {
			return err
		}
		if err := meta.Put(schemaKey, binary.BigEndian.AppendUint64(nil, schemaVersion)); err != nil {
			return err
		}
	}
	v := meta.Get(schemaKey)
	if len(v) != 8 {
		return errors.New("no schema version: not a broker database")
	}
	if version := binary.BigEndian.Uint64(v); version > schemaVersion {
		return fmt.Errorf("%w (schema version %d; this broker reads up to %d)", ErrNewerSchema, version, schemaVersion)
	}
	for _, name := range [][]byte{accountsBucket, appPasswordsBucket} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// Close releases the database and its lock.
func (d *DB) Close() error { return d.db.Close() }

// Backup writes a consistent copy of the database to w while it stays in
// use, and returns the number of bytes written.
func (d *DB) Backup(w io.Writer) (n int64, err error) {
	err = d.db.View(func(tx *bbolt.Tx) error {
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

func (d *DB) view(ctx context.Context, f func(*bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.db.View(f)
}

func (d *DB) update(ctx context.Context, f func(*bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.db.Update(f)
}
