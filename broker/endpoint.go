package broker

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mailbroker/broker/config"
	"golang.org/x/oauth2"
)

const (
	// maxResponseBytes bounds what is read of an identity platform answer;
	// a token response is a few KiB.
	maxResponseBytes = 1 << 20
	// assertionLifetime is the exp of a client assertion: long enough for
	// clock skew, short enough that a leaked one is soon worthless.
	assertionLifetime = 5 * time.Minute
	// clientAssertionType is RFC 7523's client authentication by JWT.
	clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// tokenResponse is a successful answer of the token endpoint (RFC 6749
// section 5.1), with Entra's id_token.
type tokenResponse struct {
	AccessToken  string          `json:"access_token"`
	TokenType    string          `json:"token_type"`
	ExpiresIn    json.RawMessage `json:"expires_in"` // a number, or a string from some servers
	RefreshToken string          `json:"refresh_token"`
	Scope        string          `json:"scope"`
	IDToken      string          `json:"id_token"`
}

// endpoint talks to one app's token endpoint.
type endpoint struct {
	app  *config.App
	cred *appCredential
}

func newEndpoint(app *config.App, cred *appCredential) endpoint {
	if cred == nil {
		cred = newAppCredential(app)
	}
	return endpoint{app: app, cred: cred}
}

// post sends form to a token endpoint with the app's client
// authentication when withClient is set, and decodes the token response.
func (e endpoint) post(ctx context.Context, rawURL string, form url.Values, withClient bool) (*tokenResponse, error) {
	if withClient {
		if err := e.authenticate(form, rawURL); err != nil {
			return nil, err
		}
	}
	var tr tokenResponse
	if err := e.postJSON(ctx, rawURL, form, &tr); err != nil {
		return nil, err
	}
	if tr.AccessToken == "" {
		return nil, errors.New("token response has no access_token")
	}
	return &tr, nil
}

// postJSON posts form (with client_id) and decodes a JSON answer into out.
// An error answer is an *oauth2.RetrieveError, which classify explains.
func (e endpoint) postJSON(ctx context.Context, rawURL string, form url.Values, out any) error {
	form.Set("client_id", e.app.ClientID)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := httpClient(ctx).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("reading the identity platform's answer: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		re := &oauth2.RetrieveError{Response: resp, Body: body}
		var eb errorBody
		if json.Unmarshal(body, &eb) == nil {
			re.ErrorCode, re.ErrorDescription = eb.Error, eb.Description
		}
		return re
	}
	if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct != "" && ct != "application/json" {
		return fmt.Errorf("the identity platform answered %s, not JSON", ct)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return errors.New("the identity platform's answer is not valid JSON")
	}
	return nil
}

// httpClient is the client ctx carries (oauth2.HTTPClient), as for
// x/oauth2, or the default one.
func httpClient(ctx context.Context) *http.Client {
	if c, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok && c != nil {
		return c
	}
	return defaultHTTPClient()
}

// authenticate adds the app's client authentication to form: a fresh
// client assertion for a certificate, the secret, or only the client ID
// for a public client. aud is the token endpoint the form goes to.
func (e endpoint) authenticate(form url.Values, aud string) error {
	switch cc := e.cred.get(); {
	case cc.key != nil:
		jwt, err := clientAssertion(e.app.ClientID, cc, aud, time.Now())
		if err != nil {
			return err
		}
		form.Set("client_assertion_type", clientAssertionType)
		form.Set("client_assertion", jwt)
	case cc.secret != "":
		form.Set("client_secret", cc.secret)
	}
	return nil
}

// clientAssertion is the JWT Entra accepts instead of a secret: PS256,
// naming the certificate by its SHA-256 thumbprint, for aud = the token
// endpoint, with a fresh jti so it cannot be replayed. now is wall-clock
// time: Entra checks nbf and exp against its own.
func clientAssertion(clientID string, cc *clientCredential, aud string, now time.Time) (string, error) {
	key, ok := cc.key.(*rsa.PrivateKey)
	if !ok {
		return "", errors.New("client certificate key is not RSA")
	}
	thumb := sha256.Sum256(cc.cert.Raw)
	header := map[string]string{
		"alg":      "PS256",
		"typ":      "JWT",
		"x5t#S256": base64.RawURLEncoding.EncodeToString(thumb[:]),
	}
	claims := map[string]any{
		"aud": aud,
		"iss": clientID,
		"sub": clientID,
		"jti": rand.Text(),
		"nbf": now.Unix(),
		"iat": now.Unix(),
		"exp": now.Add(assertionLifetime).Unix(),
	}
	h, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPSS(rand.Reader, key, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	if err != nil {
		return "", fmt.Errorf("signing the client assertion: %w", err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// toToken turns a response into a token, its lifetime from expires_in
// against the broker's clock now.
func (tr *tokenResponse) toToken(now time.Time) (*token, error) {
	var v any
	if len(tr.ExpiresIn) > 0 {
		json.Unmarshal(tr.ExpiresIn, &v)
	}
	lifetime := expiresIn(v)
	if lifetime <= 0 {
		return nil, errors.New("token response has no usable expires_in")
	}
	return &token{
		AccessToken:  tr.AccessToken,
		Expiry:       now.Add(lifetime),
		RefreshToken: tr.RefreshToken,
		Scope:        tr.Scope,
		Obtained:     now,
	}, nil
}

// idClaims are the ID token claims broker reads: who signed in, and when
// their password expires (Entra's optional pwd_exp, seconds after iat).
type idClaims struct {
	PreferredUsername string `json:"preferred_username"`
	UPN               string `json:"upn"`
	Email             string `json:"email"`
	IssuedAt          int64  `json:"iat"`
	PasswordExpiresIn int64  `json:"pwd_exp,string"`
}

// parseIDToken reads the claims of an ID token received straight from the
// token endpoint over TLS, which OpenID Connect Core 3.1.3.7 lets a client
// trust without checking the signature.
func parseIDToken(s string) (*idClaims, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return nil, errors.New("id_token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, errors.New("id_token payload is not base64url")
	}
	var c idClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		// pwd_exp is a string in v1.0 tokens and a number elsewhere.
		var loose struct {
			idClaims
			PasswordExpiresIn json.Number `json:"pwd_exp"`
		}
		if err2 := json.Unmarshal(payload, &loose); err2 != nil {
			return nil, errors.New("id_token payload is not JSON")
		}
		c = loose.idClaims
		n, _ := loose.PasswordExpiresIn.Int64()
		c.PasswordExpiresIn = n
	}
	return &c, nil
}

// user is who signed in, lower case.
func (c *idClaims) user() string {
	for _, s := range []string{c.PreferredUsername, c.UPN, c.Email} {
		if s != "" {
			return strings.ToLower(s)
		}
	}
	return ""
}

// passwordExpires is when the user's password expires, zero if not said.
func (c *idClaims) passwordExpires() time.Time {
	if c.PasswordExpiresIn <= 0 || c.IssuedAt <= 0 {
		return time.Time{}
	}
	return time.Unix(c.IssuedAt+c.PasswordExpiresIn, 0)
}
