package m365sim

import (
	"crypto/sha256"
	"encoding/base64"
)

// authorizationCode redeems an authorization code: once, within ten
// minutes, by the client it was issued to, with the redirect_uri of the
// authorization request and the code_verifier of its code_challenge. The
// scope is that of the authorization request.
func (e *Entra) authorizationCode(req *tokenRequest) (*tokenResponse, *Failure) {
	c, f := e.takeCode(req)
	if f != nil {
		return nil, f
	}
	d := delegation{user: c.user, amr: c.amr, scope: c.scope}
	return e.userTokens(req, d, c.scope, c.scope.has("offline_access"))
}

// takeCode checks the code of req and marks it redeemed.
func (e *Entra) takeCode(req *tokenRequest) (*authCode, *Failure) {
	code := req.form.Get("code")
	if code == "" {
		return nil, errMissingParam("code")
	}
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.codes[code]
	switch {
	case c == nil:
		return nil, errMalformedGrant()
	case c.tenantID != req.tenant.id || c.clientID != req.app.ClientID:
		return nil, errGrantClient()
	case c.redeemed:
		return nil, errCodeRedeemed()
	case !now.Before(c.issued.Add(authCodeLifetime)):
		return nil, errCodeExpired()
	case req.form.Get("redirect_uri") != c.redirectURI:
		return nil, errCodeReplyMismatch(req.form.Get("redirect_uri"), c.redirectURI)
	case c.challenge != "" && !verifierMatches(req.form.Get("code_verifier"), c.challenge):
		return nil, errCodeVerifier()
	case c.user.Disabled:
		return nil, errDisabled()
	}
	c.redeemed = true
	return c, nil
}

// verifierMatches is the S256 check of RFC 7636.
func verifierMatches(verifier, challenge string) bool {
	if len(verifier) < 43 || len(verifier) > 128 {
		return false
	}
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:]) == challenge
}
