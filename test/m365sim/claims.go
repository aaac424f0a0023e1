package m365sim

import (
	"strconv"
	"strings"
	"time"
)

// Claims are the claims of an access token the simulator issued.
type Claims struct {
	Issuer    string
	Audience  string
	TenantID  string
	AppID     string // client ID of the app the token was issued to
	IDType    string // "app" or "user"
	UPN       string // users only
	ObjectID  string // the user, or the app's service principal
	Roles     []string
	Scopes    []string
	IssuedAt  time.Time
	NotBefore time.Time
	ExpiresAt time.Time
}

// accessClaims is the wire form: Entra v1.0 access tokens, as Exchange
// Online receives them.
type accessClaims struct {
	Aud        string   `json:"aud"`
	Iss        string   `json:"iss"`
	Iat        int64    `json:"iat"`
	Nbf        int64    `json:"nbf"`
	Exp        int64    `json:"exp"`
	Amr        []string `json:"amr,omitempty"`
	AppID      string   `json:"appid"`
	AppIDACR   string   `json:"appidacr"`
	IDP        string   `json:"idp,omitempty"`
	IDType     string   `json:"idtyp"`
	Name       string   `json:"name,omitempty"`
	OID        string   `json:"oid"`
	Roles      []string `json:"roles,omitempty"`
	Scp        string   `json:"scp,omitempty"`
	Sub        string   `json:"sub"`
	TID        string   `json:"tid"`
	UniqueName string   `json:"unique_name,omitempty"`
	UPN        string   `json:"upn,omitempty"`
	UTI        string   `json:"uti"`
	Ver        string   `json:"ver"`
}

func (c *accessClaims) public() *Claims {
	out := &Claims{
		Issuer:    c.Iss,
		Audience:  c.Aud,
		TenantID:  c.TID,
		AppID:     c.AppID,
		IDType:    c.IDType,
		UPN:       c.UPN,
		ObjectID:  c.OID,
		Roles:     c.Roles,
		Scopes:    strings.Fields(c.Scp),
		IssuedAt:  time.Unix(c.Iat, 0),
		NotBefore: time.Unix(c.Nbf, 0),
		ExpiresAt: time.Unix(c.Exp, 0),
	}
	return out
}

// idClaims is a v2.0 ID token, issued when the client asks for openid.
type idClaims struct {
	Aud               string `json:"aud"`
	Iss               string `json:"iss"`
	Iat               int64  `json:"iat"`
	Nbf               int64  `json:"nbf"`
	Exp               int64  `json:"exp"`
	Name              string `json:"name,omitempty"`
	OID               string `json:"oid"`
	PreferredUsername string `json:"preferred_username"`
	Sub               string `json:"sub"`
	TID               string `json:"tid"`
	Ver               string `json:"ver"`
	// PwdExp and PwdURL are Entra's optional claims for a password that
	// will expire: seconds from iat, as a decimal string as Entra sends it,
	// and where to change it.
	PwdExp string `json:"pwd_exp,omitempty"`
	PwdURL string `json:"pwd_url,omitempty"`
}

// changePasswordURL is the pwd_url Entra sends.
const changePasswordURL = "https://portal.microsoftonline.com/ChangePassword.aspx"

// clockSkew is how far Entra backdates iat and nbf.
const clockSkew = 5 * time.Minute

// accessToken issues an access token of app a for resource res: app-only
// when u is nil, else delegated with the permissions perms. acr is how the
// client authenticated: "0" public, "1" secret, "2" certificate.
func (e *Entra) accessToken(t *tenant, a *app, acr string, u *user, amr []string, res *resource, perms []string) (string, time.Duration, error) {
	now := e.now()
	lifetime := e.tokenLifetime()
	c := accessClaims{
		Aud:   res.aud,
		Iss:   e.Issuer(t.id),
		Iat:   now.Add(-clockSkew).Unix(),
		Nbf:   now.Add(-clockSkew).Unix(),
		Exp:   now.Add(lifetime).Unix(),
		AppID: a.ClientID,
		TID:   t.id,
		UTI:   randomString(16),
		Ver:   "1.0",
	}
	c.AppIDACR = acr
	if u == nil {
		c.IDType = "app"
		c.IDP = c.Iss
		c.OID = a.spID
		c.Sub = a.spID
		c.Roles = a.rolesFor(res)
	} else {
		c.IDType = "user"
		c.Amr = amr
		c.Name = u.name
		c.OID = u.oid
		c.Sub = u.oid
		c.UPN = u.upn
		c.UniqueName = u.upn
		c.Scp = strings.Join(perms, " ")
	}
	tok, err := signJWT(e.key, e.kid, c)
	return tok, lifetime, err
}

func (e *Entra) idToken(t *tenant, a *app, u *user) (string, error) {
	now := e.now()
	iat := now.Add(-clockSkew)
	e.mu.Lock()
	expires := u.PasswordExpires
	e.mu.Unlock()
	var pwdExp, pwdURL string
	if !expires.IsZero() && now.Before(expires) {
		pwdExp = strconv.FormatInt(int64(expires.Sub(iat)/time.Second), 10)
		pwdURL = changePasswordURL
	}
	return signJWT(e.key, e.kid, idClaims{
		Aud:               a.ClientID,
		Iss:               "https://login.microsoftonline.com/" + t.id + "/v2.0",
		Iat:               now.Add(-clockSkew).Unix(),
		Nbf:               now.Add(-clockSkew).Unix(),
		Exp:               now.Add(time.Hour).Unix(),
		Name:              u.name,
		OID:               u.oid,
		PreferredUsername: u.upn,
		Sub:               u.oid,
		TID:               t.id,
		Ver:               "2.0",
		PwdExp:            pwdExp,
		PwdURL:            pwdURL,
	})
}
