package broker

import (
	"bytes"
	"context"
	"sort"
	"sync"
	"time"

	"github.com/mailbroker/broker/store"
)

// memStore is an in-memory store.Store for tests, with the bbolt store's
// error semantics (callers pass lower-case mailboxes, as the broker does).
// changed is notified on every write.
type memStore struct {
	changed signal

	mu        sync.Mutex
	accounts  map[string]store.Account
	passwords map[[2]string]store.AppPassword
	touches   int
	// gate, when set, holds PutAccount until closed; held counts the
	// writes waiting.
	gate chan struct{}
	held int
}

// holdPuts makes account writes wait until the returned channel is closed.
func (s *memStore) holdPuts() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = make(chan struct{})
	return s.gate
}

func (s *memStore) heldPuts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

var _ store.Store = (*memStore)(nil)

func newMemStore() *memStore {
	return &memStore{accounts: make(map[string]store.Account), passwords: make(map[[2]string]store.AppPassword)}
}

func (s *memStore) Account(_ context.Context, mailbox string) (*store.Account, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[mailbox]
	if !ok {
		return nil, store.ErrNotFound
	}
	a.Token = bytes.Clone(a.Token)
	return &a, nil
}

func (s *memStore) Accounts(_ context.Context) ([]*store.Account, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var list []*store.Account
	for _, a := range s.accounts {
		a.Token = bytes.Clone(a.Token)
		list = append(list, &a)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Mailbox < list[j].Mailbox })
	return list, nil
}

func (s *memStore) PutAccount(_ context.Context, a *store.Account) error {
	s.mu.Lock()
	if gate := s.gate; gate != nil {
		s.held++
		s.mu.Unlock()
		s.changed.notify()
		<-gate
		s.mu.Lock()
		s.held--
		s.gate = nil
	}
	c := *a
	c.Token = bytes.Clone(a.Token)
	s.accounts[a.Mailbox] = c
	s.mu.Unlock()
	s.changed.notify()
	return nil
}

func (s *memStore) DeleteAccount(_ context.Context, mailbox string) error {
	s.mu.Lock()
	if _, ok := s.accounts[mailbox]; !ok {
		s.mu.Unlock()
		return store.ErrNotFound
	}
	delete(s.accounts, mailbox)
	s.mu.Unlock()
	s.changed.notify()
	return nil
}

func (s *memStore) AppPassword(_ context.Context, mailbox, id string) (*store.AppPassword, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.passwords[[2]string{mailbox, id}]
	if !ok {
		return nil, store.ErrNotFound
	}
	return &p, nil
}

func (s *memStore) AppPasswords(_ context.Context, mailbox string) ([]*store.AppPassword, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var list []*store.AppPassword
	for _, p := range s.passwords {
		if mailbox == "" || p.Mailbox == mailbox {
			list = append(list, &p)
		}
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].Mailbox != list[j].Mailbox {
			return list[i].Mailbox < list[j].Mailbox
		}
		return list[i].CreatedAt.Before(list[j].CreatedAt)
	})
	return list, nil
}

func (s *memStore) AddAppPassword(_ context.Context, p *store.AppPassword) error {
	s.mu.Lock()
	k := [2]string{p.Mailbox, p.ID}
	if _, ok := s.passwords[k]; ok {
		s.mu.Unlock()
		return store.ErrExists
	}
	s.passwords[k] = *p
	s.mu.Unlock()
	s.changed.notify()
	return nil
}

func (s *memStore) DeleteAppPassword(_ context.Context, mailbox, id string) error {
	s.mu.Lock()
	k := [2]string{mailbox, id}
	if _, ok := s.passwords[k]; !ok {
		s.mu.Unlock()
		return store.ErrNotFound
	}
	delete(s.passwords, k)
	s.mu.Unlock()
	s.changed.notify()
	return nil
}

func (s *memStore) TouchAppPassword(_ context.Context, mailbox, id string, at time.Time) error {
	s.mu.Lock()
	k := [2]string{mailbox, id}
	p, ok := s.passwords[k]
	if !ok {
		s.mu.Unlock()
		return store.ErrNotFound
	}
	p.LastUsed = at
	s.passwords[k] = p
	s.touches++
	s.mu.Unlock()
	s.changed.notify()
	return nil
}

func (s *memStore) Close() error { return nil }

// dump is every byte the store holds, for scanning for secrets.
func (s *memStore) dump() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b bytes.Buffer
	for _, a := range s.accounts {
		b.WriteString(a.Mailbox)
		b.Write(a.Token)
	}
	for _, p := range s.passwords {
		b.WriteString(p.Mailbox + p.ID + p.Label + p.Hash)
	}
	return b.Bytes()
}

func (s *memStore) token(mailbox string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.accounts[mailbox].Token)
}

func (s *memStore) touchCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.touches
}
