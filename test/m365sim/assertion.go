package m365sim

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"time"
)

const (
	assertionTypeJWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// assertionSkew is the clock skew allowed on nbf and exp.
	assertionSkew = 5 * time.Minute
	// maxAssertionLifetime bounds exp: MSAL makes assertions of 10
	// minutes; one that lives for more than an hour is a client bug.
	maxAssertionLifetime = time.Hour
)

type assertionHeader struct {
	Alg     string `json:"alg"`
	X5t     string `json:"x5t"`
	X5tS256 string `json:"x5t#S256"`
}

type assertionClaims struct {
	Aud audience `json:"aud"`
	Iss string   `json:"iss"`
	Sub string   `json:"sub"`
	Jti string   `json:"jti"`
	Exp *float64 `json:"exp"`
	Nbf *float64 `json:"nbf"`
}

// audience is aud, a string or an array of them.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*a = audience{s}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return err
	}
	*a = list
	return nil
}

// checkAssertion validates a client assertion as Entra does: RS256 or
// PS256, signed by the key of a registered certificate named by x5t#S256
// or x5t, the certificate not expired, iss = sub = client ID, aud the token
// endpoint, nbf and exp around now, and a jti not seen before.
func (e *Entra) checkAssertion(t *tenant, a *app, tenantName, assertion string) *Failure {
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return errAssertionMalformed("not a JWS in compact serialisation")
	}
	var raw [3][]byte
	for i, p := range parts {
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil {
			return errAssertionMalformed("bad base64url")
		}
		raw[i] = b
	}
	var h assertionHeader
	if err := json.Unmarshal(raw[0], &h); err != nil {
		return errAssertionMalformed("bad header")
	}
	var c assertionClaims
	dec := json.NewDecoder(bytes.NewReader(raw[1]))
	if err := dec.Decode(&c); err != nil {
		return errAssertionMalformed("bad claims")
	}
	if h.Alg != "RS256" && h.Alg != "PS256" {
		return errAssertionAlg(h.Alg)
	}
	cert := findCertificate(a.Certificates, h)
	if cert == nil {
		return errAssertionKey(a.ClientID)
	}
	sha1sum := sha1.Sum(cert.Raw)
	thumb := strings.ToUpper(hex.EncodeToString(sha1sum[:]))
	const keyDate = "01/02/2006 15:04:05"
	start, end := cert.NotBefore.UTC().Format(keyDate), cert.NotAfter.UTC().Format(keyDate)
	now := e.now()
	if now.After(cert.NotAfter) {
		return errAssertionCertExpired(thumb, start, end)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || !verifyAssertion(pub, h.Alg, parts[0]+"."+parts[1], raw[2]) {
		return errAssertionSignature(thumb, start, end)
	}
	if !strings.EqualFold(c.Iss, a.ClientID) || !strings.EqualFold(c.Sub, a.ClientID) {
		return errAssertionIssuer()
	}
	if !slices.ContainsFunc(c.Aud, func(aud string) bool { return e.isTokenEndpoint(t, tenantName, aud) }) {
		return errAssertionAudience()
	}
	if c.Exp == nil {
		return errAssertionMalformed("no exp claim")
	}
	exp := unixTime(*c.Exp)
	nbf := time.Unix(0, 0) // what Entra reports for no nbf
	if c.Nbf != nil {
		nbf = unixTime(*c.Nbf)
	}
	if now.Add(assertionSkew).Before(nbf) || !now.Add(-assertionSkew).Before(exp) || exp.After(now.Add(maxAssertionLifetime+assertionSkew)) {
		const layout = "2006-01-02T15:04:05.0000000Z"
		return errAssertionTime(now.UTC().Format(layout), nbf.UTC().Format(layout), exp.UTC().Format(layout))
	}
	if c.Jti == "" {
		return errAssertionMalformed("no jti claim")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, until := range e.jtis {
		if now.After(until) {
			delete(e.jtis, k)
		}
	}
	key := a.ClientID + "\x00" + c.Jti
	if _, seen := e.jtis[key]; seen {
		return errAssertionReplay(c.Jti)
	}
	e.jtis[key] = exp.Add(assertionSkew)
	return nil
}

// findCertificate returns the certificate whose thumbprint the header
// names: x5t#S256 (SHA-256 of the DER) before x5t (SHA-1).
func findCertificate(certs []*x509.Certificate, h assertionHeader) *x509.Certificate {
	for _, cert := range certs {
		s256 := sha256.Sum256(cert.Raw)
		s1 := sha1.Sum(cert.Raw)
		switch {
		case h.X5tS256 != "":
			if sameThumbprint(h.X5tS256, s256[:]) {
				return cert
			}
		case h.X5t != "":
			if sameThumbprint(h.X5t, s1[:]) {
				return cert
			}
		}
	}
	return nil
}

// sameThumbprint compares a base64url thumbprint, padded or not, with sum.
func sameThumbprint(b64 string, sum []byte) bool {
	got, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(b64, "="))
	return err == nil && bytes.Equal(got, sum)
}

func verifyAssertion(pub *rsa.PublicKey, alg, signed string, sig []byte) bool {
	sum := sha256.Sum256([]byte(signed))
	if alg == "PS256" {
		return rsa.VerifyPSS(pub, crypto.SHA256, sum[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil
	}
	return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) == nil
}

// isTokenEndpoint tells whether aud names the token endpoint of tenant t:
// by the name in the request path, the tenant's ID or its domain, v2.0 or
// v1.0.
func (e *Entra) isTokenEndpoint(t *tenant, tenantName, aud string) bool {
	for _, name := range []string{tenantName, t.id, t.domain} {
		for _, path := range []string{"/oauth2/v2.0/token", "/oauth2/token"} {
			if strings.EqualFold(aud, e.url+"/"+name+path) {
				return true
			}
		}
	}
	return false
}

func unixTime(secs float64) time.Time {
	return time.Unix(0, int64(secs*float64(time.Second)))
}
