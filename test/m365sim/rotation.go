package m365sim

// Entra keeps a refresh token valid after it is redeemed: a client that
// keeps using an old one instead of the newest works until the old one
// idles out. The bookkeeping here makes that visible to tests.

// redeem marks g as redeemed, counting a second redemption, which strict
// rotation refuses.
func (e *Entra) redeem(g *grant) *Failure {
	e.mu.Lock()
	defer e.mu.Unlock()
	if g.redeemed {
		e.refreshReuse++
		if e.strictRotation {
			return errRefreshReused()
		}
	}
	g.redeemed = true
	return nil
}

// RefreshTokenReuse counts refresh_token grants that presented a refresh
// token redeemed before, that is one that was no longer the newest of its
// chain (strict rotation's refusals included). A client that always stores
// and uses the newest refresh token keeps it at 0.
func (e *Entra) RefreshTokenReuse() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refreshReuse
}

// SetStrictRefreshRotation makes a refresh token single use, unlike Entra:
// redeeming one a second time fails with invalid_grant AADSTS70008.
func (e *Entra) SetStrictRefreshRotation(strict bool) {
	e.mu.Lock()
	e.strictRotation = strict
	e.mu.Unlock()
}

// ExpireRefreshTokens makes every refresh token the user has now fail as
// idle for 90 days (invalid_grant AADSTS700082). Tokens issued later work.
func (e *Entra) ExpireRefreshTokens(tenantName, upn string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	u, err := e.userLocked(tenantName, upn)
	if err != nil {
		return err
	}
	for _, g := range e.grants {
		if g.user == u {
			g.expired = true
		}
	}
	return nil
}
