package m365sim

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
)

// Errors of ValidateToken, for errors.Is.
var (
	ErrTokenMalformed    = errors.New("m365sim: malformed token")
	ErrTokenSignature    = errors.New("m365sim: bad token signature")
	ErrTokenExpired      = errors.New("m365sim: token expired")
	ErrTokenNotYetValid  = errors.New("m365sim: token not yet valid")
	ErrTokenIssuer       = errors.New("m365sim: unknown token issuer")
	ErrTokenAudience     = errors.New("m365sim: wrong token audience")
	ErrTokenNoPermission = errors.New("m365sim: token lacks the permission")
	ErrNoMailboxAccess   = errors.New("m365sim: no access to the mailbox")
)

type jwtHeader struct {
	Typ string `json:"typ"`
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// keyID derives a kid the way Entra's look: base64url of a SHA-1 thumbprint.
func keyID(pub *rsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha1.Sum(der)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// signJWT makes an RS256 JWT of claims.
func signJWT(key *rsa.PrivateKey, kid string, claims any) (string, error) {
	h, err := json.Marshal(jwtHeader{Typ: "JWT", Alg: "RS256", Kid: kid})
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signed := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// verifyJWT checks an RS256 signature by pub and decodes the claims into dst.
func verifyJWT(pub *rsa.PublicKey, kid, token string, dst any) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ErrTokenMalformed
	}
	var raw [3][]byte
	for i, p := range parts {
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil {
			return ErrTokenMalformed
		}
		raw[i] = b
	}
	var h jwtHeader
	if err := json.Unmarshal(raw[0], &h); err != nil {
		return ErrTokenMalformed
	}
	if h.Alg != "RS256" || h.Kid != kid {
		return ErrTokenSignature
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], raw[2]); err != nil {
		return ErrTokenSignature
	}
	dec := json.NewDecoder(bytes.NewReader(raw[1]))
	if err := dec.Decode(dst); err != nil {
		return ErrTokenMalformed
	}
	return nil
}
