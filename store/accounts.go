package store

import (
	"context"
	"encoding/json"
	"errors"

	"go.etcd.io/bbolt"
)

// Account returns the account record of mailbox.
func (d *DB) Account(ctx context.Context, mailbox string) (*Account, error) {
	mailbox, err := normMailbox(mailbox)
	if err != nil {
		return nil, err
	}
	var a *Account
	err = d.view(ctx, func(tx *bbolt.Tx) error {
		v := tx.Bucket(accountsBucket).Get([]byte(mailbox))
		if v == nil {
			return ErrNotFound
		}
		var err error
		a, err = decodeAccount(mailbox, v)
		return err
	})
	return a, err
}

// Accounts returns every account record, ordered by mailbox.
func (d *DB) Accounts(ctx context.Context) ([]*Account, error) {
	var list []*Account
	err := d.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(accountsBucket).ForEach(func(k, v []byte) error {
			a, err := decodeAccount(string(k), v)
			if err != nil {
				return err
			}
			list = append(list, a)
			return nil
		})
	})
	return list, err
}

// PutAccount creates or replaces the record of a.Mailbox.
func (d *DB) PutAccount(ctx context.Context, a *Account) error {
	if a == nil {
		return errors.New("store: nil account")
	}
	mailbox, err := normMailbox(a.Mailbox)
	if err != nil {
		return err
	}
	v, err := json.Marshal(accountRecord{Token: a.Token, UpdatedAt: a.UpdatedAt})
	if err != nil {
		return err
	}
	return d.update(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(accountsBucket).Put([]byte(mailbox), v)
	})
}

// DeleteAccount deletes the record of mailbox. It leaves the mailbox's app
// passwords alone: they are deleted one by one, deliberately.
func (d *DB) DeleteAccount(ctx context.Context, mailbox string) error {
	mailbox, err := normMailbox(mailbox)
	if err != nil {
		return err
	}
	return d.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(accountsBucket)
		if b.Get([]byte(mailbox)) == nil {
			return ErrNotFound
		}
		return b.Delete([]byte(mailbox))
	})
}
