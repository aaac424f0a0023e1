package store

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"
)

// AppPassword returns one app password of mailbox.
func (d *DB) AppPassword(ctx context.Context, mailbox, id string) (*AppPassword, error) {
	mailbox, key, err := appPasswordRef(mailbox, id)
	if err != nil {
		return nil, err
	}
	var p *AppPassword
	err = d.view(ctx, func(tx *bbolt.Tx) error {
		v := tx.Bucket(appPasswordsBucket).Get(key)
		if v == nil {
			return ErrNotFound
		}
		var err error
		p, err = decodeAppPassword(mailbox, id, v)
		return err
	})
	return p, err
}

// AppPasswords lists the app passwords of mailbox, or of every mailbox when
// mailbox is empty, ordered by mailbox, then creation time, then id.
func (d *DB) AppPasswords(ctx context.Context, mailbox string) ([]*AppPassword, error) {
	var prefix []byte
	if mailbox != "" {
		m, err := normMailbox(mailbox)
		if err != nil {
			return nil, err
		}
		prefix = []byte(m + keySep)
	}
	var list []*AppPassword
	err := d.view(ctx, func(tx *bbolt.Tx) error {
		c := tx.Bucket(appPasswordsBucket).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			m, id := splitAppPasswordKey(k)
			p, err := decodeAppPassword(m, id, v)
			if err != nil {
				return err
			}
			list = append(list, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Keys are already in mailbox order, so a stable sort within each
	// mailbox is all that is left.
	slices.SortStableFunc(list, func(a, b *AppPassword) int {
		return cmp.Or(cmp.Compare(a.Mailbox, b.Mailbox), a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return list, nil
}

// AddAppPassword stores a new app password; ErrExists if its mailbox and ID
// are taken.
func (d *DB) AddAppPassword(ctx context.Context, p *AppPassword) error {
	if p == nil {
		return errors.New("store: nil app password")
	}
	mailbox, err := normMailbox(p.Mailbox)
	if err != nil {
		return err
	}
	if err := checkID(p.ID); err != nil {
		return err
	}
	v, err := json.Marshal(appPasswordRecord{Label: p.Label, Hash: p.Hash, CreatedAt: p.CreatedAt, LastUsed: p.LastUsed})
	if err != nil {
		return err
	}
	key := appPasswordKey(mailbox, p.ID)
	return d.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(appPasswordsBucket)
		if b.Get(key) != nil {
			return ErrExists
		}
		return b.Put(key, v)
	})
}

// DeleteAppPassword deletes one app password of mailbox.
func (d *DB) DeleteAppPassword(ctx context.Context, mailbox, id string) error {
	_, key, err := appPasswordRef(mailbox, id)
	if err != nil {
		return err
	}
	return d.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(appPasswordsBucket)
		if b.Get(key) == nil {
			return ErrNotFound
		}
		return b.Delete(key)
	})
}

// TouchAppPassword records a use at time at. It never moves LastUsed
// back, so that concurrent logins recording out of order keep the latest.
func (d *DB) TouchAppPassword(ctx context.Context, mailbox, id string, at time.Time) error {
	_, key, err := appPasswordRef(mailbox, id)
	if err != nil {
		return err
	}
	return d.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(appPasswordsBucket)
		v := b.Get(key)
		if v == nil {
			return ErrNotFound
		}
		var r appPasswordRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("store: app password %s %s: %w", mailbox, id, err)
		}
		if !at.After(r.LastUsed) {
			return nil
		}
		r.LastUsed = at
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put(key, v)
	})
}

// appPasswordRef checks and normalises a reference to one app password and
// returns its key.
func appPasswordRef(mailbox, id string) (string, []byte, error) {
	mailbox, err := normMailbox(mailbox)
	if err != nil {
		return "", nil, err
	}
	if err := checkID(id); err != nil {
		return "", nil, err
	}
	return mailbox, appPasswordKey(mailbox, id), nil
}
