package broker

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mailbroker/broker/config"
)

// token is a sign-in's token set: the access token for the accounts'
// scopes and, for delegated sign-ins, what renews it. It is what is sealed
// into the store.
type token struct {
	AccessToken  string    `json:"access_token"`
	Expiry       time.Time `json:"expiry"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Scope        string    `json:"scope,omitempty"`
	// Obtained is when the request was sent: the base of the lifetime, by
	// the broker's clock.
	Obtained time.Time `json:"obtained"`

	// RefreshIssued is when RefreshToken was issued; every redemption
	// rotates it.
	RefreshIssued time.Time `json:"refresh_issued,omitzero"`
	// SignedIn is when `broker login` (or the sealed password) last signed
	// the user in, and User who that was.
	SignedIn time.Time `json:"signed_in,omitzero"`
	User     string    `json:"user,omitempty"`
	// Password is the password flow's, kept to sign in again when the
	// refresh token dies; PasswordExpires is when Entra said it expires.
	Password        string    `json:"password,omitempty"`
	PasswordExpires time.Time `json:"password_expires,omitzero"`
}

// lifetime is how long the token was issued for.
func (t *token) lifetime() time.Duration { return t.Expiry.Sub(t.Obtained) }

// renewed is a new access token that keeps what cur knew of the sign-in.
// A response without a refresh token leaves the current one in use.
func (t *token) renewed(cur *token, now time.Time) *token {
	if cur == nil {
		return t
	}
	t.SignedIn, t.User, t.Password, t.PasswordExpires = cur.SignedIn, cur.User, cur.Password, cur.PasswordExpires
	if t.RefreshToken == "" {
		t.RefreshToken, t.RefreshIssued = cur.RefreshToken, cur.RefreshIssued
	} else {
		t.RefreshIssued = now
	}
	return t
}

// grant obtains tokens for one sign-in. cur is the sign-in's current token
// set (nil when none), whose refresh token or password it may redeem;
// scope is what to ask for. ctx carries the HTTP client (oauth2.HTTPClient)
// and bounds the request; now is the broker's clock at the time of sending,
// the base for expires_in.
type grant interface {
	token(ctx context.Context, now time.Time, cur *token, scope string) (*token, error)
}

// clientCredentials is the app-only flow.
type clientCredentials struct{ ep endpoint }

func (g clientCredentials) token(ctx context.Context, now time.Time, cur *token, scope string) (*token, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {scope}}
	tr, err := g.ep.post(ctx, g.ep.app.TokenURL(), form, true)
	if err != nil {
		return nil, err
	}
	return tr.toToken(now)
}

// consentRequired is AADSTS65001: the user or an admin has not consented
// to a permission asked for.
const consentRequired = 65001

// delegated renews a user's sign-in with its refresh token; for the
// password flow, a dead refresh token is replaced by signing in again with
// the sealed password.
type delegated struct {
	ep   endpoint
	acct *config.Account
}

func (g delegated) token(ctx context.Context, now time.Time, cur *token, scope string) (*token, error) {
	if cur == nil || cur.RefreshToken == "" {
		if cur != nil && cur.Password != "" {
			return g.password(ctx, now, cur, scope)
		}
		return nil, errNotSignedIn
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {cur.RefreshToken}, "scope": {scope}}
	tr, err := g.ep.post(ctx, g.ep.app.TokenURL(), form, !g.ep.cred.public())
	if err != nil && classify(err).Code == consentRequired && cur.Scope != "" && cur.Scope != scope {
		// The configuration asks for more than the user consented to (say
		// POP after [pop3] was added): keep serving what was granted; the
		// missing permission shows where it is used, and broker login asks
		// for it.
		form.Set("scope", cur.Scope)
		tr, err = g.ep.post(ctx, g.ep.app.TokenURL(), form, !g.ep.cred.public())
	}
	if err != nil {
		if te := classify(err); te.NeedsLogin && cur.Password != "" {
			return g.password(ctx, now, cur, scope)
		}
		return nil, err
	}
	t, err := tr.toToken(now)
	if err != nil {
		return nil, err
	}
	return t.renewed(cur, now), nil
}

// password signs in again with the sealed password, for scope (the
// accounts' own, or another resource's for `broker token`).
func (g delegated) password(ctx context.Context, now time.Time, cur *token, scope string) (*token, error) {
	tr, err := g.ep.passwordGrant(ctx, g.acct, cur.Password, withOIDC(strings.Fields(scope)))
	if err != nil {
		return nil, err
	}
	t, err := tr.toToken(now)
	if err != nil {
		return nil, err
	}
	t = t.renewed(cur, now)
	t.SignedIn = now
	if tr.IDToken != "" {
		if c, err := parseIDToken(tr.IDToken); err == nil && !c.passwordExpires().IsZero() {
			t.PasswordExpires = c.passwordExpires()
		}
	}
	return t, nil
}

// expiresIn reads expires_in as JSON number or, as some servers send it,
// string.
func expiresIn(v any) time.Duration {
	var secs float64
	switch v := v.(type) {
	case float64:
		secs = v
	case string:
		secs, _ = strconv.ParseFloat(v, 64)
	}
	if secs <= 0 || secs > 1e9 {
		return 0
	}
	return time.Duration(secs) * time.Second
}

// scopeString is how scopes go on the wire.
func scopeString(scopes []string) string { return strings.Join(scopes, " ") }
