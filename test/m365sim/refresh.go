package m365sim

import (
	"strings"
	"time"
)

// refreshTokenLifetime is Entra's inactivity limit: each refresh token
// lives this long, and each refresh hands out a new one.
const refreshTokenLifetime = 90 * 24 * time.Hour

// grant is what a refresh token stands for.
type grant struct {
	tenantID, clientID string
	user               *user
	generation         int // user.generation at issue
	scope              *scopeSet
	issued             time.Time
}

// userTokens answers a delegated grant: an access token for s, a refresh
// token if withRefresh, an ID token if s asks for openid.
func (e *Entra) userTokens(req *tokenRequest, u *user, s *scopeSet, origScope *scopeSet, withRefresh bool) (*tokenResponse, *Failure) {
	tok, lifetime, err := e.accessToken(req.tenant, req.app, req.confidential, u, s.res, s.perms)
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
		resp.RefreshToken = "0.A" + randomString(48)
		e.mu.Lock()
		e.grants[resp.RefreshToken] = &grant{
			tenantID:   req.tenant.id,
			clientID:   req.app.ClientID,
			user:       u,
			generation: u.generation,
			scope:      origScope,
			issued:     e.now(),
		}
		e.mu.Unlock()
	}
	if s.has("openid") {
		if resp.IDToken, err = e.idToken(req.tenant, req.app, u); err != nil {
			return nil, errServer(err)
		}
	}
	return resp, nil
}

// refreshToken redeems a refresh token. The old one stays valid; the new
// one carries a fresh 90-day window. A scope may name another resource
// (consent is assumed), without one the original scope is used.
func (e *Entra) refreshToken(req *tokenRequest) (*tokenResponse, *Failure) {
	rt := req.form.Get("refresh_token")
	if rt == "" {
		return nil, errMissingParam("refresh_token")
	}
	e.mu.Lock()
	g, ok := e.grants[rt]
	var current int
	var validFrom time.Time
	if ok {
		current, validFrom = g.user.generation, g.user.validFrom
	}
	e.mu.Unlock()
	const dateLayout = "2006-01-02T15:04:05.000Z"
	switch {
	case !ok:
		return nil, errMalformedGrant()
	case g.tenantID != req.tenant.id || g.clientID != req.app.ClientID:
		return nil, errGrantClient()
	case g.generation < current:
		return nil, errRevoked(g.issued.UTC().Format(dateLayout), validFrom.UTC().Format(dateLayout))
	case !e.now().Before(g.issued.Add(refreshTokenLifetime)):
		return nil, errRefreshExpired(g.issued.UTC().Format(dateLayout))
	}
	s := g.scope
	if raw := req.form.Get("scope"); raw != "" {
		var f *Failure
		if s, f = parseScope(raw, req.tenantName, false); f != nil {
			return nil, f
		}
	}
	return e.userTokens(req, g.user, s, g.scope, true)
}

// password is the resource owner password credentials grant (ROPC).
func (e *Entra) password(req *tokenRequest) (*tokenResponse, *Failure) {
	username, password := req.form.Get("username"), req.form.Get("password")
	if username == "" {
		return nil, errMissingParam("username")
	}
	if password == "" {
		return nil, errMissingParam("password")
	}
	s, f := parseScope(req.form.Get("scope"), req.tenantName, false)
	if f != nil {
		return nil, f
	}
	u, f := e.checkPassword(req.tenant, username, password)
	if f != nil {
		return nil, f
	}
	return e.userTokens(req, u, s, s, s.has("offline_access"))
}

func (e *Entra) checkPassword(t *tenant, username, password string) (*user, *Failure) {
	e.mu.Lock()
	u := t.users[strings.ToLower(username)]
	e.mu.Unlock()
	if u == nil {
		return nil, errNoUser(t.domain)
	}
	if !equalSecret(u.password, password) {
		return nil, errBadPassword()
	}
	return u, nil
}
