package m365sim

import (
	"fmt"
	"slices"
	"strings"
)

// ValidateToken checks an access token as a resource server does: RS256
// signature by the simulator's key, nbf and exp by its clock (no skew
// allowance), and an issuer of a known tenant matching tid.
func (e *Entra) ValidateToken(token string) (*Claims, error) {
	var raw accessClaims
	if err := verifyJWT(&e.key.PublicKey, e.kid, token, &raw); err != nil {
		return nil, err
	}
	c := raw.public()
	now := e.now()
	if now.Before(c.NotBefore) {
		return nil, ErrTokenNotYetValid
	}
	if !now.Before(c.ExpiresAt) {
		return nil, ErrTokenExpired
	}
	if c.Issuer != e.Issuer(c.TenantID) {
		return nil, ErrTokenIssuer
	}
	if _, ok := e.TenantID(c.TenantID); !ok {
		return nil, ErrTokenIssuer
	}
	return c, nil
}

// MayAccess is Exchange Online's authorisation of a validated token for a
// mailbox. role is the permission the protocol needs: for an app token an
// application role ("IMAP.AccessAsApp"), which the token must carry and the
// app's service principal must hold FullAccess to the mailbox; for a user
// token a delegated scope ("IMAP.AccessAsUser.All"), and the mailbox must
// be the user's own or one the user is a delegate of (AddDelegate).
func (e *Entra) MayAccess(c *Claims, mailbox, role string) error {
	if c.Audience != outlook.aud {
		return fmt.Errorf("%w: %q", ErrTokenAudience, c.Audience)
	}
	switch c.IDType {
	case "app":
		if !slices.Contains(c.Roles, role) {
			return fmt.Errorf("%w: roles %v lack %s", ErrTokenNoPermission, c.Roles, role)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		t := e.tenants[c.TenantID]
		if t == nil {
			return ErrTokenIssuer
		}
		a := t.apps[c.AppID]
		if a == nil || !slices.ContainsFunc(a.Mailboxes, func(m string) bool { return strings.EqualFold(m, mailbox) }) {
			return fmt.Errorf("%w: app %s has no FullAccess to %s", ErrNoMailboxAccess, c.AppID, mailbox)
		}
		return nil
	case "user":
		if !slices.Contains(c.Scopes, role) {
			return fmt.Errorf("%w: scopes %v lack %s", ErrTokenNoPermission, c.Scopes, role)
		}
		if !strings.EqualFold(c.UPN, mailbox) && !e.isDelegate(c.TenantID, mailbox, c.UPN) {
			return fmt.Errorf("%w: %s is not %s nor its delegate", ErrNoMailboxAccess, c.UPN, mailbox)
		}
		return nil
	}
	return fmt.Errorf("%w: idtyp %q", ErrTokenNoPermission, c.IDType)
}
