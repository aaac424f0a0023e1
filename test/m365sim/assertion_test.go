package m365sim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

const certAppID = "8b8b8b8b-2222-4333-8444-955555555555"

// certKey is a certificate credential and its private key.
type certKey struct {
	cert *x509.Certificate
	key  *rsa.PrivateKey
}

func newCertKey(t *testing.T, notAfter time.Time) certKey {
	t.Helper()
	certPEM, keyPEM, cert, err := NewClientCertificate("broker test", notAfter)
	if err != nil {
		t.Fatalf("NewClientCertificate: %v", err)
	}
	if b, _ := pem.Decode(certPEM); b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("certificate PEM: got %q", certPEM)
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("key PEM: got %q", keyPEM)
	}
	key, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatalf("ParsePKCS8PrivateKey: %v", err)
	}
	return certKey{cert: cert, key: key.(*rsa.PrivateKey)}
}

// assertion signs a client assertion; header and claims override the
// defaults (nil deletes).
func (ck certKey) assertion(t *testing.T, header, claims map[string]any) string {
	t.Helper()
	s256 := sha256.Sum256(ck.cert.Raw)
	h := map[string]any{"alg": "RS256", "typ": "JWT", "x5t#S256": base64.RawURLEncoding.EncodeToString(s256[:])}
	for k, v := range header {
		if v == nil {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	hb, _ := json.Marshal(h)
	cb, _ := json.Marshal(claims)
	signed := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb)
	sum := sha256.Sum256([]byte(signed))
	var sig []byte
	var err error
	if h["alg"] == "PS256" {
		sig, err = rsa.SignPSS(rand.Reader, ck.key, crypto.SHA256, sum[:], nil)
	} else {
		sig, err = rsa.SignPKCS1v15(rand.Reader, ck.key, crypto.SHA256, sum[:])
	}
	if err != nil {
		t.Fatalf("signing: %v", err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestClientAssertion(t *testing.T) {
	f := newFixture(t)
	now := f.clock.Now()
	good := newCertKey(t, now.Add(365*24*time.Hour))
	old := newCertKey(t, now.Add(-time.Hour))
	unregistered := newCertKey(t, now.Add(365*24*time.Hour))
	f.e.AddApp(App{Tenant: domain, ClientID: certAppID, Certificates: []*x509.Certificate{good.cert, old.cert}, Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{alice}})

	jti := 0
	claims := func(kv ...any) map[string]any {
		jti++
		c := map[string]any{
			"aud": f.tokenURL(domain), "iss": certAppID, "sub": certAppID,
			"jti": "jti-" + strconv.Itoa(jti), "nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(c, kv[i].(string))
			} else {
				c[kv[i].(string)] = kv[i+1]
			}
		}
		return c
	}
	cc := func(assertion string, kv ...string) url.Values {
		return form(append([]string{"grant_type", "client_credentials", "client_id", certAppID, "scope", outlookDef,
			"client_assertion_type", assertionTypeJWT, "client_assertion", assertion}, kv...)...)
	}

	accepted := map[string]string{
		"x5t#S256":        good.assertion(t, nil, claims()),
		"x5t":             good.assertion(t, map[string]any{"x5t#S256": nil, "x5t": x5t(good.cert)}, claims()),
		"PS256":           good.assertion(t, map[string]any{"alg": "PS256"}, claims()),
		"tenant ID":       good.assertion(t, nil, claims("aud", f.tokenURL(f.tid))),
		"aud array":       good.assertion(t, nil, claims("aud", []string{"https://other.example/", f.tokenURL(domain)})),
		"no nbf":          good.assertion(t, nil, claims("nbf", nil)),
		"nbf within skew": good.assertion(t, nil, claims("nbf", now.Add(4*time.Minute).Unix())),
	}
	for name, a := range accepted {
		t.Run(name, func(t *testing.T) {
			tr := f.token(t, domain, cc(a))
			c, err := f.e.ValidateToken(tr.AccessToken)
			if err != nil {
				t.Fatalf("ValidateToken: %v", err)
			}
			if c.AppID != certAppID || c.IDType != "app" || len(c.Roles) != 1 {
				t.Fatalf("claims: got %+v", *c)
			}
			var raw map[string]any
			decodePart(t, strings.Split(tr.AccessToken, ".")[1], &raw)
			if raw["appidacr"] != "2" {
				t.Fatalf("appidacr: got %v, want 2 (certificate)", raw["appidacr"])
			}
		})
	}

	replayed := good.assertion(t, nil, claims())
	f.token(t, domain, cc(replayed))
	tests := []struct {
		name       string
		form       url.Values
		wantStatus int
		wantErr    string
		wantCode   int
	}{
		{"replay", cc(replayed), 401, "invalid_client", 50027},
		{"unregistered certificate", cc(unregistered.assertion(t, nil, claims())), 401, "invalid_client", 700027},
		{"no thumbprint", cc(good.assertion(t, map[string]any{"x5t#S256": nil}, claims())), 401, "invalid_client", 700027},
		{"signed by another key", cc(certKey{good.cert, unregistered.key}.assertion(t, nil, claims())), 401, "invalid_client", 700027},
		{"expired certificate", cc(old.assertion(t, nil, claims())), 401, "invalid_client", 700027},
		{"HS256", cc(good.assertion(t, map[string]any{"alg": "HS256"}, claims())), 401, "invalid_client", 5002738},
		{"wrong issuer", cc(good.assertion(t, nil, claims("iss", publicID))), 401, "invalid_client", 700021},
		{"wrong subject", cc(good.assertion(t, nil, claims("sub", publicID))), 401, "invalid_client", 700021},
		{"wrong audience", cc(good.assertion(t, nil, claims("aud", "https://login.microsoftonline.com/"+domain+"/oauth2/v2.0/token"))), 401, "invalid_client", 700023},
		{"other tenant's audience", cc(good.assertion(t, nil, claims("aud", f.tokenURL("common")))), 401, "invalid_client", 700023},
		{"expired", cc(good.assertion(t, nil, claims("exp", now.Add(-6*time.Minute).Unix()))), 401, "invalid_client", 700024},
		{"not yet valid", cc(good.assertion(t, nil, claims("nbf", now.Add(6*time.Minute).Unix()))), 401, "invalid_client", 700024},
		{"lives too long", cc(good.assertion(t, nil, claims("exp", now.Add(24*time.Hour).Unix()))), 401, "invalid_client", 700024},
		{"no exp", cc(good.assertion(t, nil, claims("exp", nil))), 401, "invalid_client", 50027},
		{"no jti", cc(good.assertion(t, nil, claims("jti", nil))), 401, "invalid_client", 50027},
		{"malformed", cc("a.b"), 401, "invalid_client", 50027},
		{"wrong assertion type", cc(good.assertion(t, nil, claims()), "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"), 400, "invalid_request", 90011},
		{"secret too", cc(good.assertion(t, nil, claims()), "client_secret", secret), 400, "invalid_request", 90023},
		{"secret to a certificate-only app", form("grant_type", "client_credentials", "client_id", certAppID, "scope", outlookDef, "client_secret", secret), 401, "invalid_client", 7000215},
		{"nothing", form("grant_type", "client_credentials", "client_id", certAppID, "scope", outlookDef), 401, "invalid_client", 7000218},
		{"assertion for an app with a secret only", form("grant_type", "client_credentials", "client_id", confID, "scope", outlookDef, "client_assertion_type", assertionTypeJWT, "client_assertion", good.assertion(t, nil, claims("iss", confID, "sub", confID))), 401, "invalid_client", 700027},
		{"assertion for a public client", form("grant_type", "refresh_token", "client_id", publicID, "refresh_token", "x", "client_assertion_type", assertionTypeJWT, "client_assertion", good.assertion(t, nil, claims("iss", publicID, "sub", publicID))), 401, "invalid_client", 700025},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, eb := f.tokenError(t, domain, tt.form)
			checkError(t, status, eb, tt.wantStatus, tt.wantErr, tt.wantCode)
		})
	}
}

func x5t(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
