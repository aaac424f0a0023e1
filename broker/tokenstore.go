package broker

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/mailbroker/broker/store"
)

const storeTimeout = 10 * time.Second

// tokenAAD binds a sealed token set to its account, so that a blob copied
// to another account's record does not open.
func tokenAAD(mailbox string) []byte { return []byte("broker token v1\x00" + mailbox) }

func (m *tokens) persist(a *tokenState, t *token) {
	a.persistMu.Lock()
	defer a.persistMu.Unlock()
	if t.Obtained.Before(a.persisted) {
		return // a newer token was written already
	}
	plain, err := json.Marshal(t)
	if err != nil {
		m.log.Error("cannot encode token", "account", a.mailbox, "err", err)
		return
	}
	rec := &store.Account{Mailbox: a.mailbox, Token: m.sealer.Seal(plain, tokenAAD(a.mailbox)), UpdatedAt: m.now()}
	clear(plain)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := m.store.PutAccount(ctx, rec); err != nil {
		m.log.Error("cannot save token; a restart will need a new one", "account", a.mailbox, "err", err)
		return
	}
	a.persisted = t.Obtained
}

// load reads the persisted tokens of the configured accounts. A blob that
// does not open is ignored (and a new token requested): it was sealed with
// another key, or for another account.
func (m *tokens) load(ctx context.Context) error {
	recs, err := m.store.Accounts(ctx)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		a := m.account(rec.Mailbox)
		if a == nil || rec.Token == nil {
			continue
		}
		t, err := m.openToken(rec)
		if err != nil {
			m.log.Error("ignoring stored token", "account", rec.Mailbox, "err", err)
			continue
		}
		a.mu.Lock()
		a.tok = t
		a.mu.Unlock()
		a.persistMu.Lock()
		a.persisted = t.Obtained
		a.persistMu.Unlock()
	}
	return nil
}

func (m *tokens) openToken(rec *store.Account) (*token, error) {
	plain, err := m.sealer.Open(rec.Token, tokenAAD(rec.Mailbox))
	if err != nil {
		if errors.Is(err, ErrUnseal) {
			return nil, errors.New("sealed token does not open: broker.key changed, or the record was copied from another account")
		}
		return nil, err
	}
	defer clear(plain)
	var t token
	if err := json.Unmarshal(plain, &t); err != nil {
		return nil, errors.New("sealed token is not valid JSON")
	}
	return &t, nil
}
