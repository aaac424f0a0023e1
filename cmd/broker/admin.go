package main

import (
	"context"
	"errors"
	"path/filepath"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/store"
)

// accountAdmin manages accounts' sign-ins and tokens. localBroker (no
// daemon running) and controlClient (through the daemon) implement it.
type accountAdmin interface {
	// SignedIn hands over what `broker login` obtained and returns the
	// accounts that share the sign-in.
	SignedIn(ctx context.Context, mailbox string, c *broker.Credentials) ([]string, error)
	Logout(ctx context.Context, mailbox string) ([]string, error)
	// Statuses reports mailbox, or every account when mailbox is "".
	Statuses(ctx context.Context, mailbox string) ([]broker.Status, error)
	AccessToken(ctx context.Context, mailbox, scope string) (*broker.IssuedToken, error)
}

// localBroker is a Broker serving the CLI itself, or the control socket.
type localBroker struct{ *broker.Broker }

func (b localBroker) Statuses(_ context.Context, mailbox string) ([]broker.Status, error) {
	if mailbox == "" {
		return b.AccountStatuses(), nil
	}
	s := b.AccountStatus(mailbox)
	if s.State == broker.StateUnknown {
		return nil, errors.New(s.Explanation)
	}
	return []broker.Status{s}, nil
}

// openAdmin goes through the running daemon when there is one, since it
// holds the database lock, and opens the database otherwise. A Broker
// opened here is not started: it refreshes nothing in the background, and
// asks the identity platform only when a command needs a token.
func openAdmin(cfg *config.Config) (controlAdmin, func(), error) {
	client, err := dialControl(controlSocketPath(cfg))
	if err == nil {
		return client, func() {}, nil
	}
	if !errors.Is(err, errNoDaemon) {
		return nil, nil, err
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, dbFile))
	if err != nil {
		return nil, nil, err
	}
	key, err := broker.LoadKey(cfg.StateDir)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	b, err := broker.New(cfg, st, broker.Options{Key: key})
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	matchStateDirOwner(cfg.StateDir, dbFile, broker.KeyFile)
	return localBroker{b}, func() { b.Close(); st.Close() }, nil
}
