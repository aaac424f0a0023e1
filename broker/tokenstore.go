package broker

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/mailbroker/broker/store"
)

const storeTimeout = 10 * time.Second

// tokenAAD binds a sealed token set to its record, so that a blob copied
// to another account's record does not open.
func tokenAAD(key string) []byte { return []byte("broker token v1\x00" + key) }

// persist seals t into the sign-in's record. The caller holds a.redeem, so
// writes happen in the order tokens were obtained. bbolt syncs each commit
// to disk before it returns.
func (m *tokens) persist(a *signIn, t *token) error {
	plain, err := json.Marshal(t)
	if err != nil {
		m.log.Error("cannot encode token", "account", a.account(), "err", err)
		return err
	}
	rec := &store.Account{Mailbox: a.key, Token: m.sealer.Seal(plain, tokenAAD(a.key)), UpdatedAt: m.now()}
	clear(plain)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := m.store.PutAccount(ctx, rec); err != nil {
		m.log.Error("cannot save token; a restart will need a new one", "account", a.account(), "err", err)
		return err
	}
	return nil
}

// load reads the persisted tokens of the configured sign-ins. A blob that
// does not open is ignored (and a new token requested, or a sign-in asked
// for): it was sealed with another key, or for another record. A delegated
// sign-in without a record waits for `broker login`.
func (m *tokens) load(ctx context.Context) error {
	return m.loadInto(ctx, m.snapshot())
}

// loadInto reads the persisted tokens of the sign-ins in list, as load.
func (m *tokens) loadInto(ctx context.Context, list []*signIn) error {
	if len(list) == 0 {
		return nil
	}
	recs, err := m.store.Accounts(ctx)
	if err != nil {
		return err
	}
	byKey := make(map[string]*store.Account, len(recs))
	for _, rec := range recs {
		byKey[rec.Mailbox] = rec
	}
	for _, a := range list {
		rec := byKey[a.key]
		var t *token
		if rec != nil && rec.Token != nil {
			if t, err = m.openToken(rec); err != nil {
				m.log.Error("ignoring stored token", "account", a.account(), "err", err)
			}
		}
		a.mu.Lock()
		a.tok = t
		if a.user != "" && (t == nil || (t.RefreshToken == "" && t.Password == "")) {
			a.err = errNotSignedIn
		}
		a.mu.Unlock()
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
