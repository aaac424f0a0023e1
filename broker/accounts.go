package broker

import (
	"context"

	"errors"
	"fmt"
	"github.com/mailbroker/broker/config"
	"time"
)

// SignedIn installs the credentials `broker login` obtained for mailbox's
// sign-in, which every account sharing it uses from now on. It returns
// those accounts' mailboxes.
func (b *Broker) SignedIn(ctx context.Context, mailbox string, c *Credentials) ([]string, error) {
	a, err := b.delegatedSignIn(mailbox)
	if err != nil {
		return nil, err
	}
	if c == nil || c.RefreshToken == "" || c.AccessToken == "" || c.ExpiresIn <= 0 {
		return nil, errors.New("incomplete credentials: no refresh token, access token or lifetime")
	}
	if c.User != "" && c.User != a.user {
		return nil, fmt.Errorf("signed in as %s, but %s signs in as %s", c.User, mailbox, a.user)
	}
	password := c.Password
	if a.flow != config.FlowPassword {
		password = "" // only the password flow may keep one
	}
	now := b.now()
	t := &token{
		AccessToken:     c.AccessToken,
		Expiry:          now.Add(time.Duration(c.ExpiresIn) * time.Second),
		RefreshToken:    c.RefreshToken,
		Scope:           c.Scope,
		Obtained:        now,
		RefreshIssued:   now,
		SignedIn:        now,
		User:            a.user,
		Password:        password,
		PasswordExpires: c.PasswordExpires,
	}
	if err := b.tokens.signedIn(a, t); err != nil {
		return nil, err
	}
	return append([]string(nil), a.mailboxes()...), nil
}

// Logout forgets the tokens (and a sealed password) of mailbox's sign-in,
// and returns the accounts that shared it. A delegated account then needs
// `broker login`; an app-only one gets a new token at its next login.
func (b *Broker) Logout(ctx context.Context, mailbox string) ([]string, error) {
	a := b.tokens.account(normalize(mailbox))
	if a == nil {
		return nil, errNotConfigured(mailbox)
	}
	if err := b.tokens.logout(ctx, a); err != nil {
		return nil, err
	}
	return append([]string(nil), a.mailboxes()...), nil
}

func (b *Broker) delegatedSignIn(mailbox string) (*signIn, error) {
	a := b.tokens.account(normalize(mailbox))
	switch {
	case a == nil:
		return nil, errNotConfigured(mailbox)
	case a.user == "":
		return nil, fmt.Errorf("%s uses flow %s: no one signs in, broker gets its tokens by itself", mailbox, a.flow)
	}
	return a, nil
}

// IssuedToken is an access token handed to a local tool.
type IssuedToken struct {
	AccessToken string    `json:"access_token"`
	Expires     time.Time `json:"expires"`
	Scope       string    `json:"scope,omitempty"`
}

// AccessToken returns a current access token of mailbox's sign-in for
// scope: "" for the account's own scopes (IMAP and SMTP), or another
// resource's, such as Microsoft Graph's, which the same sign-in redeems.
// Each issue is logged, without the token.
func (b *Broker) AccessToken(ctx context.Context, mailbox, scope string) (*IssuedToken, error) {
	mailbox = normalize(mailbox)
	a := b.tokens.account(mailbox)
	if a == nil {
		return nil, errNotConfigured(mailbox)
	}
	var it *IssuedToken
	if scope == "" || scope == a.scope {
		tok, expires, err := b.tokens.get(ctx, mailbox)
		if err != nil {
			return nil, err
		}
		it = &IssuedToken{AccessToken: tok, Expires: expires, Scope: a.scope}
	} else {
		t, err := b.tokens.other(ctx, a, scope)
		if err != nil {
			return nil, err
		}
		it = &IssuedToken{AccessToken: t.AccessToken, Expires: t.Expiry, Scope: scope}
	}
	b.log.Info("access token issued to a local tool", "account", mailbox, "scope", it.Scope, "expires", it.Expires.Round(time.Second))
	return it, nil
}

// AccountStatus reports the token state of one account.
func (b *Broker) AccountStatus(mailbox string) Status {
	mailbox = normalize(mailbox)
	acct := b.accounts.Load().byMailbox[mailbox]
	a := b.tokens.account(mailbox)
	if acct == nil || a == nil {
		return Status{Mailbox: mailbox, State: StateUnknown, Explanation: errNotConfigured(mailbox).Error()}
	}
	s := Status{Mailbox: mailbox, Flow: acct.Flow, App: acct.App.Name, Identity: a.user, SMTPVia: config.SMTPViaOf(acct)}
	if a.user == "" {
		s.Identity = "app:" + acct.App.ClientID
	}
	now := b.now()
	a.mu.Lock()
	valid := a.tok != nil && a.tok.AccessToken != "" && a.tok.Expiry.Sub(now) >= minValidity
	if a.tok != nil && a.tok.AccessToken != "" && now.Before(a.tok.Expiry) {
		s.AccessTokenExpires = a.tok.Expiry
	}
	if a.tok != nil {
		s.SignedIn, s.RefreshTokenIssued = a.tok.SignedIn, a.tok.RefreshIssued
	}
	s.LastRefresh, s.LastRefreshOK = a.lastRefresh, a.lastOK
	s.UpstreamRejection = a.rejected
	if a.err != nil {
		s.Explanation = a.err.Error()
		s.NextAttempt = a.retryAt
	}
	switch {
	case a.err != nil && a.err.NeedsLogin:
		s.State = StateNeedsLogin
	case a.err != nil && a.err.Permanent && !valid:
		s.State = StateFailing
	case valid:
		s.State = StateOK
	case a.err != nil:
		s.State = StateFailing
	default:
		s.State = StateRefreshing
	}
	a.mu.Unlock()
	s.Credentials = a.credentials(now)
	return s
}
