package m365sim

import "strings"

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
	u, f := e.checkPassword(req.tenant, username, password, s.res)
	if f != nil {
		return nil, f
	}
	d := delegation{user: u, amr: []string{"pwd"}, scope: s}
	return e.userTokens(req, d, s, s.has("offline_access"))
}

// checkPassword signs a user in with a password, in Entra's order: smart
// lockout before the password, then the account, then what the password
// grant cannot do (change an expired password, MFA).
func (e *Entra) checkPassword(t *tenant, username, password string, res *resource) (*user, *Failure) {
	e.mu.Lock()
	defer e.mu.Unlock()
	u := t.users[strings.ToLower(username)]
	switch {
	case u == nil:
		return nil, errNoUser(t.domain)
	case u.Locked:
		return nil, errLocked()
	case !equalSecret(u.Password, password):
		return nil, errBadPassword()
	case u.Disabled:
		return nil, errDisabled()
	case !u.PasswordExpires.IsZero() && !e.now().Before(u.PasswordExpires):
		return nil, errPasswordExpired()
	case u.MFARequired:
		return nil, errMFARequired(res.appID())
	}
	return u, nil
}
