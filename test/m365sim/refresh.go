package m365sim

import (
	"time"
)

// refreshTokenLifetime is Entra's inactivity limit: each refresh token
// lives this long, and each refresh hands out a new one.
const refreshTokenLifetime = 90 * 24 * time.Hour

// delegation is what a user's sign-in lets an app do, and what each
// refresh token of it carries on.
type delegation struct {
	user  *user
	amr   []string  // how the user signed in
	scope *scopeSet // what a refresh without a scope asks for
	// family names the chain of refresh tokens that one sign-in started;
	// "" starts a new one.
	family string
}

// grant is what a refresh token stands for.
type grant struct {
	delegation
	tenantID, clientID string
	generation         int // user.generation at issue
	issued             time.Time
	redeemed           bool // a refresh_token grant used it
	expired            bool // ExpireRefreshTokens
}

// userTokens answers a delegated grant: an access token for s, a refresh
// token of d if withRefresh, an ID token if s asks for openid.
func (e *Entra) userTokens(req *tokenRequest, d delegation, s *scopeSet, withRefresh bool) (*tokenResponse, *Failure) {
	tok, lifetime, err := e.accessToken(req.tenant, req.app, req.acr, d.user, d.amr, s.res, s.perms)
	if err != nil {
		return nil, errServer(err)
	}
	secs := int64(lifetime.Seconds())
	resp := &tokenResponse{
		TokenType:    "Bearer",
		Scope:        s.responseScope(),
		ExpiresIn:    secs,
		ExtExpiresIn: secs,
		AccessToken:  tok,
	}
	if withRefresh {
		if d.family == "" {
			d.family = NewGUID()
		}
		resp.RefreshToken = "0.A" + randomString(48)
		e.mu.Lock()
		e.grants[resp.RefreshToken] = &grant{
			delegation: d,
			tenantID:   req.tenant.id,
			clientID:   req.app.ClientID,
			generation: d.user.generation,
			issued:     e.now(),
		}
		e.mu.Unlock()
	}
	if s.has("openid") {
		if resp.IDToken, err = e.idToken(req.tenant, req.app, d.user); err != nil {
			return nil, errServer(err)
		}
	}
	return resp, nil
}

// refreshToken redeems a refresh token. The old one stays valid (unless
// SetStrictRefreshRotation); the new one carries a fresh 90-day window. A
// scope may name another resource (consent is assumed), without one the
// original scope is used.
func (e *Entra) refreshToken(req *tokenRequest) (*tokenResponse, *Failure) {
	rt := req.form.Get("refresh_token")
	if rt == "" {
		return nil, errMissingParam("refresh_token")
	}
	e.mu.Lock()
	g, ok := e.grants[rt]
	var current int
	var validFrom time.Time
	var disabled, expired bool
	if ok {
		current, validFrom, disabled, expired = g.user.generation, g.user.validFrom, g.user.Disabled, g.expired
	}
	e.mu.Unlock()
	const dateLayout = "2006-01-02T15:04:05.000Z"
	switch {
	case !ok:
		return nil, errMalformedGrant()
	case g.tenantID != req.tenant.id || g.clientID != req.app.ClientID:
		return nil, errGrantClient()
	case disabled:
		return nil, errDisabled()
	case g.generation < current:
		return nil, errRevoked(g.issued.UTC().Format(dateLayout), validFrom.UTC().Format(dateLayout))
	case expired || !e.now().Before(g.issued.Add(refreshTokenLifetime)):
		return nil, errRefreshExpired(g.issued.UTC().Format(dateLayout))
	}
	s := g.scope
	if raw := req.form.Get("scope"); raw != "" {
		var f *Failure
		if s, f = parseScope(raw, req.tenantName, false); f != nil {
			return nil, f
		}
	}
	if f := e.redeem(g); f != nil {
		return nil, f
	}
	return e.userTokens(req, g.delegation, s, true)
}
