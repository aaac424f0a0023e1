package m365sim

import (
	"encoding/base64"
	"math/big"
	"net/http"
)

// handleOpenIDConfig serves the v2.0 discovery document of a tenant.
func (e *Entra) handleOpenIDConfig(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("tenant")
	iss := "https://login.microsoftonline.com/{tenantid}/v2.0"
	if t, f := e.pathTenant(name); f != nil {
		e.writeFailure(w, r, f)
		return
	} else if t != nil {
		iss = "https://login.microsoftonline.com/" + t.id + "/v2.0"
	}
	base := e.url + "/" + name
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                iss,
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
	})
}

// handleKeys serves the signing key as a JWK set.
func (e *Entra) handleKeys(w http.ResponseWriter, r *http.Request) {
	pub := &e.key.PublicKey
	enc := base64.RawURLEncoding
	writeJSON(w, http.StatusOK, map[string]any{"keys": []map[string]any{{
		"kty": "RSA",
		"use": "sig",
		"kid": e.kid,
		"x5t": e.kid,
		"n":   enc.EncodeToString(pub.N.Bytes()),
		"e":   enc.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}})
}
