// Package broker decides local logins and owns the Microsoft 365 tokens
// used upstream: it issues and checks app passwords, keeps each account's
// access token fresh, and seals what it stores.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/xoauth2"
	"github.com/mailbroker/broker/store"
)

// Options are the Broker's dependencies. Key is required.
type Options struct {
	// Key seals tokens at rest (32 bytes; see LoadKey).
	Key    []byte
	Logger *slog.Logger
	// HTTPClient talks to the identity platform; nil means one with
	// timeouts.
	HTTPClient *http.Client
	// Now is the clock for every validity decision; nil means time.Now.
	Now func() time.Time
	// Observer is told of token requests' outcomes, for metrics. Nil:
	// none.
	Observer Observer
}

// Broker is the proxy's Authenticator.
type Broker struct {
	store    store.Store
	log      *slog.Logger
	now      func() time.Time
	life     *lifecycle
	accounts atomic.Pointer[accountIndex] // swapped whole by a future Reload
	tokens   *tokens
	pw       *passwords

	startOnce sync.Once
}

var (
	_ proxy.Authenticator             = (*Broker)(nil)
	_ proxy.AccountAuthenticator      = (*Broker)(nil)
	_ proxy.UpstreamRejectionReporter = (*Broker)(nil)
)

// accountIndex finds configured accounts by local login name and mailbox,
// both lower case.
type accountIndex struct {
	byLogin, byMailbox map[string]*config.Account
}

var errNoToken = errors.New("no token yet")

func errNotConfigured(mailbox string) error {
	return fmt.Errorf("%s is not a configured account", mailbox)
}

// New builds a Broker without touching the network: it only reads the
// store, so the command line can use it to manage app passwords.
func New(cfg *config.Config, st store.Store, opts Options) (*Broker, error) {
	sealer, err := NewSealer(opts.Key)
	if err != nil {
		return nil, err
	}
	idx, err := indexAccounts(cfg)
	if err != nil {
		return nil, err
	}
	b := &Broker{store: st, log: opts.Logger, now: opts.Now, life: newLifecycle()}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.now == nil {
		b.now = time.Now
	}
	b.accounts.Store(idx)
	client := opts.HTTPClient
	if client == nil {
		client = defaultHTTPClient()
	}
	b.tokens = newTokens(idx)
	b.tokens.life, b.tokens.now, b.tokens.log, b.tokens.client, b.tokens.store, b.tokens.sealer = b.life, b.now, b.log, client, st, sealer
	b.tokens.obs = opts.Observer
	b.pw = newPasswords(b.life, st, b.now, b.log, runtime.GOMAXPROCS(0))

	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := b.tokens.load(ctx); err != nil {
		return nil, fmt.Errorf("reading stored tokens: %w", err)
	}
	return b, nil
}

func indexAccounts(cfg *config.Config) (*accountIndex, error) {
	idx := &accountIndex{byLogin: make(map[string]*config.Account), byMailbox: make(map[string]*config.Account)}
	for _, a := range cfg.Accounts {
		mailbox := normalize(a.Mailbox)
		login := normalize(a.Login)
		if login == "" {
			login = mailbox
		}
		if mailbox == "" {
			return nil, errors.New("account without mailbox")
		}
		if idx.byMailbox[mailbox] != nil {
			return nil, fmt.Errorf("account %s is configured twice", mailbox)
		}
		if idx.byLogin[login] != nil {
			return nil, fmt.Errorf("login name %s is used by two accounts", login)
		}
		if a.App == nil || a.App.Cloud == nil {
			return nil, fmt.Errorf("account %s needs an app with a cloud", mailbox)
		}
		idx.byMailbox[mailbox], idx.byLogin[login] = a, a
	}
	return idx, nil
}

func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = 20 * time.Second
	return &http.Client{Transport: t, Timeout: fetchTimeout}
}

// Start begins refreshing tokens in the background; the first pass
// requests a token for every account that lacks a valid one.
func (b *Broker) Start() {
	b.startOnce.Do(func() {
		b.life.goFunc(b.tokens.refresh)
		b.life.goFunc(b.tokens.watchCredentials)
	})
}

// Close stops background work and waits for it. Token requests in flight
// are cancelled.
func (b *Broker) Close() { b.life.close() }

// Authenticate checks a local login and returns how to log in upstream.
func (b *Broker) Authenticate(ctx context.Context, login *proxy.Login) (*proxy.Upstream, error) {
	var mailbox string
	if a := b.accounts.Load().byLogin[normalize(login.Username)]; a != nil {
		mailbox = normalize(a.Mailbox)
	}
	if _, err := b.pw.verify(ctx, login, mailbox); err != nil {
		return nil, err
	}
	if up := b.graphUpstream(login.Protocol, mailbox); up != nil {
		return up, nil
	}
	return b.upstream(ctx, mailbox)
}

// AuthenticateAccount returns how to log in upstream as a configured
// account, named by its mailbox or login name, without a password. The
// proxy asks only for the account an administrator named for it
// (smtp.allow_unauthenticated_as); should the two disagree, the client
// learns no more than from a wrong password.
func (b *Broker) AuthenticateAccount(ctx context.Context, protocol proxy.Protocol, account string) (*proxy.Upstream, error) {
	idx := b.accounts.Load()
	name := normalize(account)
	a := idx.byMailbox[name]
	if a == nil {
		a = idx.byLogin[name]
	}
	if a == nil {
		return nil, errCredentials(fmt.Sprintf("%s login without password as %q: not a configured account", protocol, name))
	}
	if up := b.graphUpstream(protocol, normalize(a.Mailbox)); up != nil {
		return up, nil
	}
	return b.upstream(ctx, normalize(a.Mailbox))
}

func (b *Broker) upstream(ctx context.Context, mailbox string) (*proxy.Upstream, error) {
	tok, expires, err := b.tokens.get(ctx, mailbox)
	if err != nil {
		return nil, err
	}
	return &proxy.Upstream{Account: mailbox, SASL: xoauth2.NewClient(mailbox, tok), Expires: expires}, nil
}

// UpstreamRejected is told that upstream refused a token for account: the
// token is dropped so the next login gets a new one, and the proxy is told
// to retry at once unless the token was too fresh to blame.
func (b *Broker) UpstreamRejected(account, detail string) bool {
	return b.tokens.upstreamRejected(normalize(account), strings.TrimSpace(detail))
}
