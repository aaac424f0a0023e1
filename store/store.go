// Package store keeps broker's durable state: per-account records holding
// sealed tokens, and app passwords. The API is deliberately narrow so that a
// backend other than the embedded bbolt one can implement it.
package store

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("store: not found")

// Account is the durable state of one mailbox account. Mailbox is the key,
// always lower case.
type Account struct {
	Mailbox string
	// Token is the account's token set, sealed by the caller; nil when none.
	Token     []byte
	UpdatedAt time.Time
}

// AppPassword is one issued app password. Only its hash is stored.
type AppPassword struct {
	Mailbox   string // lower case
	ID        string // unique per mailbox; public
	Label     string
	Hash      string // PHC-formatted argon2id hash
	CreatedAt time.Time
	LastUsed  time.Time // zero when never used
}

// Store is broker's durable state. Every method is safe for concurrent use.
// Returned values are copies the caller owns.
type Store interface {
	Account(ctx context.Context, mailbox string) (*Account, error)
	Accounts(ctx context.Context) ([]*Account, error)
	PutAccount(ctx context.Context, a *Account) error
	DeleteAccount(ctx context.Context, mailbox string) error

	AppPassword(ctx context.Context, mailbox, id string) (*AppPassword, error)
	// AppPasswords lists one mailbox's app passwords, or every mailbox's
	// when mailbox is empty, ordered by mailbox then creation time.
	AppPasswords(ctx context.Context, mailbox string) ([]*AppPassword, error)
	// AddAppPassword fails if mailbox and ID are already taken.
	AddAppPassword(ctx context.Context, p *AppPassword) error
	DeleteAppPassword(ctx context.Context, mailbox, id string) error
	// TouchAppPassword records a successful use.
	TouchAppPassword(ctx context.Context, mailbox, id string, at time.Time) error

	Close() error
}
