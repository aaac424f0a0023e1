package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Records are JSON, so that a later version can add fields an older one
// skips. Keys are not repeated in the values.

type accountRecord struct {
	Token     []byte    `json:"token,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

type appPasswordRecord struct {
	Label     string    `json:"label,omitempty"`
	Hash      string    `json:"hash"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	LastUsed  time.Time `json:"last_used,omitzero"`
}

func decodeAccount(mailbox string, v []byte) (*Account, error) {
	var r accountRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("store: account %s: %w", mailbox, err)
	}
	return &Account{Mailbox: mailbox, Token: r.Token, UpdatedAt: r.UpdatedAt}, nil
}

func decodeAppPassword(mailbox, id string, v []byte) (*AppPassword, error) {
	var r appPasswordRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("store: app password %s %s: %w", mailbox, id, err)
	}
	return &AppPassword{
		Mailbox:   mailbox,
		ID:        id,
		Label:     r.Label,
		Hash:      r.Hash,
		CreatedAt: r.CreatedAt,
		LastUsed:  r.LastUsed,
	}, nil
}

// keySep ends the mailbox in an app password key. It sorts before every
// other byte, so a mailbox's keys are contiguous and in mailbox order.
const keySep = "\x00"

func appPasswordKey(mailbox, id string) []byte { return []byte(mailbox + keySep + id) }

func splitAppPasswordKey(k []byte) (mailbox, id string) {
	mailbox, id, _ = strings.Cut(string(k), keySep)
	return mailbox, id
}

// normMailbox lower-cases a mailbox, the key of everything it owns.
func normMailbox(mailbox string) (string, error) {
	if mailbox == "" {
		return "", errors.New("store: empty mailbox")
	}
	if strings.Contains(mailbox, keySep) {
		return "", errors.New("store: mailbox contains NUL")
	}
	return strings.ToLower(mailbox), nil
}

func checkID(id string) error {
	if id == "" {
		return errors.New("store: empty app password id")
	}
	if strings.Contains(id, keySep) {
		return errors.New("store: app password id contains NUL")
	}
	return nil
}
