package broker

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/mailbroker/broker/store"
)

// An app password is 32 characters of lower-case base32: 6 of public ID,
// then 26 (130 bits) of secret. Legacy software stores it verbatim, so it
// is not grouped or decorated.
const (
	appPasswordLen   = 32
	appPasswordIDLen = 6
	maxLabelLen      = 200
)

var appPasswordEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// AppPasswordInfo describes an issued app password; it never carries the
// password or its hash.
type AppPasswordInfo struct {
	Mailbox   string    `json:"mailbox"`
	ID        string    `json:"id"`
	Label     string    `json:"label,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	LastUsed  time.Time `json:"last_used,omitzero"`
}

func newAppPassword() string {
	b := make([]byte, appPasswordLen*5/8)
	rand.Read(b)
	return appPasswordEncoding.EncodeToString(b)
}

func wellFormed(password string) bool {
	if len(password) != appPasswordLen {
		return false
	}
	for i := 0; i < len(password); i++ {
		c := password[i]
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// AddAppPassword issues a new app password for a configured account. The
// password is returned once; only its hash is kept.
func (b *Broker) AddAppPassword(ctx context.Context, mailbox, label string) (*AppPasswordInfo, string, error) {
	mailbox = normalize(mailbox)
	if b.accounts.Load().byMailbox[mailbox] == nil {
		return nil, "", errNotConfigured(mailbox)
	}
	if len(label) > maxLabelLen || strings.ContainsFunc(label, unicode.IsControl) {
		return nil, "", fmt.Errorf("label must be at most %d characters without control characters", maxLabelLen)
	}
	// IDs have 30 bits; a clash within one mailbox is rare but possible.
	for range 5 {
		password := newAppPassword()
		id := password[:appPasswordIDLen]
		_, err := b.store.AppPassword(ctx, mailbox, id)
		if err == nil {
			continue
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, "", err
		}
		h, err := b.pw.hash(ctx, password)
		if err != nil {
			return nil, "", err
		}
		rec := &store.AppPassword{Mailbox: mailbox, ID: id, Label: label, Hash: h.String(), CreatedAt: b.now().UTC()}
		if err := b.store.AddAppPassword(ctx, rec); err != nil {
			return nil, "", err
		}
		b.log.Info("app password added", "account", mailbox, "id", id, "label", label)
		return infoOf(rec), password, nil
	}
	return nil, "", errors.New("cannot find a free app password ID; try again")
}

// AppPasswords lists the app passwords of mailbox, or of all mailboxes when
// mailbox is empty.
func (b *Broker) AppPasswords(ctx context.Context, mailbox string) ([]*AppPasswordInfo, error) {
	recs, err := b.store.AppPasswords(ctx, normalize(mailbox))
	if err != nil {
		return nil, err
	}
	list := make([]*AppPasswordInfo, len(recs))
	for i, r := range recs {
		list[i] = infoOf(r)
	}
	return list, nil
}

// RevokeAppPassword deletes an app password. It stops working at once,
// even for a client whose login was remembered. Accounts no longer
// configured may still be cleaned up.
func (b *Broker) RevokeAppPassword(ctx context.Context, mailbox, id string) error {
	mailbox, id = normalize(mailbox), normalize(id)
	if _, err := b.store.AppPassword(ctx, mailbox, id); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%s has no app password %q: %w", mailbox, id, err)
		}
		return err
	}
	err := b.store.DeleteAppPassword(ctx, mailbox, id)
	// Forget remembered logins after the delete: a check that read the
	// record before it must not cache its success afterwards.
	b.pw.revoke(mailbox, id)
	if err != nil {
		return err
	}
	b.log.Info("app password revoked", "account", mailbox, "id", id)
	return nil
}

func infoOf(r *store.AppPassword) *AppPasswordInfo {
	return &AppPasswordInfo{Mailbox: r.Mailbox, ID: r.ID, Label: r.Label, CreatedAt: r.CreatedAt, LastUsed: r.LastUsed}
}

func normalize(s string) string { return strings.ToLower(strings.TrimSpace(s)) }
