package broker

import (
	"crypto/x509"
	"fmt"
	"math"
	"time"
)

// credentials lists what the sign-in's tokens depend on, with warnings as
// of now: the app's current secret or certificate, and a sealed password.
func (a *signIn) credentials(now time.Time) []Credential {
	a.mu.Lock()
	password := a.tok != nil && a.tok.Password != ""
	var passwordExpires time.Time
	if password {
		passwordExpires = a.tok.PasswordExpires
	}
	a.mu.Unlock()
	sp := a.sp()
	cc := sp.cred.get()
	return credentials(cc.secret != "", sp.app.ClientSecretExpires, cc.cert, password, passwordExpires, now)
}

// credentials lists what an account's tokens depend on and warns of what
// expires within expiryWarning.
func credentials(secret bool, secretExpires time.Time, cert *x509.Certificate, password bool, passwordExpires, now time.Time) []Credential {
	var list []Credential
	if secret {
		list = append(list, credential(CredentialClientSecret, secretExpires, now,
			"create a new client secret in Entra admin center > App registrations > <app> > Certificates & secrets, write its Value to client_secret_file and update client_secret_expires"))
	}
	if cert != nil {
		list = append(list, credential(CredentialCertificate, cert.NotAfter, now,
			"upload a new certificate in Entra admin center > App registrations > <app> > Certificates & secrets, then point client_certificate_file and client_key_file at it"))
	}
	if password {
		list = append(list, credential(CredentialPassword, passwordExpires, now,
			"have the user change the password, then run broker login for the account with the new one"))
	}
	return list
}

func credential(kind string, expires, now time.Time, fix string) Credential {
	c := Credential{Kind: kind, Expires: expires}
	switch left := expires.Sub(now); {
	case expires.IsZero():
	case left <= 0:
		c.Warning = fmt.Sprintf("%s expired on %s: %s", kindName(kind), expires.Format(time.DateOnly), fix)
	case left <= expiryWarning:
		c.Warning = fmt.Sprintf("%s expires on %s (in %d days): %s", kindName(kind), expires.Format(time.DateOnly), int(math.Ceil(left.Hours()/24)), fix)
	}
	return c
}

func kindName(kind string) string {
	switch kind {
	case CredentialClientSecret:
		return "the client secret"
	case CredentialCertificate:
		return "the client certificate"
	}
	return "the user's password"
}
