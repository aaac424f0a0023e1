package m365sim

import (
	"errors"
	"strings"
	"time"
)

// User is the account state of a user that UpdateUser changes.
type User struct {
	Password string
	// MFARequired is a Conditional Access policy requiring MFA: the
	// password grant fails with AADSTS50076; interactive sign-ins
	// (authorization code, device code) pass, with "mfa" in amr.
	MFARequired bool
	// PasswordExpires is when the password expires; zero means never. From
	// then on the password grant fails with AADSTS50055. Before it, ID
	// tokens carry pwd_exp and pwd_url.
	PasswordExpires time.Time
	// Disabled fails every sign-in and refresh with AADSTS50057.
	Disabled bool
	// Locked is smart lockout: password and interactive sign-ins fail with
	// AADSTS50053; refresh tokens keep working.
	Locked bool
}

type user struct {
	User
	upn, oid, name string
	// generation counts revocations: grants of older generations fail.
	generation int
	validFrom  time.Time
}

// AddUser adds a user (a work account with a mailbox of the same address)
// to a tenant; an unknown domain is added as a tenant.
func (e *Entra) AddUser(tenantName, upn, password string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.addTenantLocked(tenantName)
	name, _, _ := strings.Cut(upn, "@")
	t.users[strings.ToLower(upn)] = &user{User: User{Password: password}, upn: upn, oid: NewGUID(), name: name}
}

// UpdateUser changes a user's account state. A new password revokes the
// user's refresh tokens, as a password change does in Entra: they then
// fail with AADSTS50173.
func (e *Entra) UpdateUser(tenantName, upn string, update func(*User)) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	u, err := e.userLocked(tenantName, upn)
	if err != nil {
		return err
	}
	old := u.Password
	update(&u.User)
	if u.Password != old {
		e.revokeLocked(u)
	}
	return nil
}

// RevokeSessions revokes the user's refresh tokens, as a password reset or
// an admin's "revoke sessions" does: they then fail with AADSTS50173.
// Access tokens stay valid until they expire.
func (e *Entra) RevokeSessions(tenantName, upn string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	u, err := e.userLocked(tenantName, upn)
	if err != nil {
		return err
	}
	e.revokeLocked(u)
	return nil
}

func (e *Entra) revokeLocked(u *user) {
	u.generation++
	u.validFrom = e.now()
}

func (e *Entra) userLocked(tenantName, upn string) (*user, error) {
	t := e.tenantLocked(tenantName)
	if t == nil {
		return nil, errors.New("m365sim: unknown tenant " + tenantName)
	}
	u := t.users[strings.ToLower(upn)]
	if u == nil {
		return nil, errors.New("m365sim: unknown user " + upn)
	}
	return u, nil
}

// interactiveFailure is why an interactive sign-in of u fails, if it does:
// MFA and an expired password are dealt with in the browser.
func (st *User) interactiveFailure() *Failure {
	switch {
	case st.Locked:
		return errLocked()
	case st.Disabled:
		return errDisabled()
	}
	return nil
}

// amr is how an interactive sign-in authenticated the user.
func (st *User) amr() []string {
	if st.MFARequired {
		return []string{"pwd", "mfa"}
	}
	return []string{"pwd"}
}

// signInUser finds a user for an interactive sign-in and checks the
// account; a nil Failure comes with the user and its amr.
func (e *Entra) signInUser(t *tenant, upn string) (*user, []string, *Failure) {
	e.mu.Lock()
	defer e.mu.Unlock()
	u := t.users[strings.ToLower(upn)]
	if u == nil {
		return nil, nil, errNoUser(t.domain)
	}
	if f := u.interactiveFailure(); f != nil {
		return nil, nil, f
	}
	return u, u.amr(), nil
}
