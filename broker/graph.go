package broker

import (
	"context"
	"errors"
	"sync"

	"github.com/mailbroker/broker/proxy"
)

// graphUpstream returns the upstream of an SMTP login of an account that
// sends through Microsoft Graph (smtp_via = "graph"), or nil for any
// other login. Its Bearer gets a Graph token of the account's sign-in for
// sending (config.Account.GraphScope), cached until close to expiry, per
// message.
func (b *Broker) graphUpstream(protocol proxy.Protocol, mailbox string) *proxy.Upstream {
	if protocol != proxy.SMTP {
		return nil
	}
	acct := b.accounts.Load().byMailbox[mailbox]
	if acct == nil || !acct.ViaGraph() {
		return nil
	}
	scope := acct.GraphScope()
	return &proxy.Upstream{
		Account:        mailbox,
		Via:            proxy.ViaGraph,
		Bearer:         func(ctx context.Context) (string, error) { return b.graphToken(ctx, mailbox, scope) },
		BearerRejected: func(token string) { b.dropGraphToken(mailbox, scope, token) },
	}
}

// dropGraphToken forgets the cached Graph token of mailbox's sign-in for
// scope if it is still token, which Graph refused (401
// InvalidAuthenticationToken): the next graphToken asks the identity
// platform for a new one. A token cached since, by another message, stays.
func (b *Broker) dropGraphToken(mailbox, scope, token string) {
	a := b.tokens.account(mailbox)
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if t := a.others[scope]; t != nil && t.AccessToken == token {
		delete(a.others, scope)
	}
}

// graphFetches serialises Graph token requests per sign-in and scope, so
// that the messages of one mailbox arriving together share one request.
var graphFetches sync.Map // *signIn + scope -> *sync.Mutex

type graphFetchKey struct {
	a     *signIn
	scope string
}

// graphToken returns a Graph token for mailbox; failures are
// *proxy.LoginError as a login's: an account that needs `broker login` or
// an administrator (consent for Mail.Send missing, say) is KindAccount,
// anything else KindUnavailable.
func (b *Broker) graphToken(ctx context.Context, mailbox, scope string) (string, error) {
	a := b.tokens.account(mailbox)
	if a == nil {
		return "", &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsAdmin, Err: errNotConfigured(mailbox)}
	}
	mu, _ := graphFetches.LoadOrStore(graphFetchKey{a, scope}, &sync.Mutex{})
	lock := mu.(*sync.Mutex)
	lock.Lock()
	t, err := b.tokens.other(ctx, a, scope)
	lock.Unlock()
	if err == nil {
		return t.AccessToken, nil
	}
	var te *TokenError
	switch {
	case errors.As(err, &te) && te.NeedsLogin:
		return "", &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsLogin, Err: te}
	case errors.As(err, &te) && te.Permanent:
		return "", &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNeedsAdmin, Err: te}
	}
	return "", &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: err}
}
