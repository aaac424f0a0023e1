package m365sim

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"
)

func appAccessToken(t *testing.T, f *fixture) string {
	t.Helper()
	return f.token(t, domain, form("grant_type", "client_credentials", "client_id", confID, "client_secret", secret, "scope", outlookDef)).AccessToken
}

// TestJWTShape checks the token with only the published key, as Dovecot or
// any JWT library would.
func TestJWTShape(t *testing.T) {
	f := newFixture(t)
	tok := appAccessToken(t, f)
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("got %d parts, want 3", len(parts))
	}
	var header map[string]string
	decodePart(t, parts[0], &header)
	if header["typ"] != "JWT" || header["alg"] != "RS256" || header["kid"] != f.e.KeyID() || len(header) != 3 {
		t.Fatalf("header: got %v", header)
	}
	block, _ := pem.Decode(f.e.PublicKeyPEM())
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("PublicKeyPEM: got %q", f.e.PublicKeyPEM())
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatalf("parsing key: %v", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatalf("decoding signature: %v", err)
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, sum[:], sig); err != nil {
		t.Fatalf("signature: %v", err)
	}
	var claims map[string]any
	decodePart(t, parts[1], &claims)
	now := f.clock.Now()
	want := map[string]any{
		"aud":   "https://outlook.office.com",
		"iss":   "https://sts.windows.net/" + f.tid + "/",
		"appid": confID,
		"tid":   f.tid,
		"idtyp": "app",
		"ver":   "1.0",
		"iat":   float64(now.Add(-5 * time.Minute).Unix()),
		"nbf":   float64(now.Add(-5 * time.Minute).Unix()),
		"exp":   float64(now.Add(75 * time.Minute).Unix()),
	}
	for k, v := range want {
		if claims[k] != v {
			t.Errorf("claim %s: got %v, want %v", k, claims[k], v)
		}
	}
	if oid, _ := claims["oid"].(string); !isGUID(oid) {
		t.Errorf("oid: got %v, want a GUID", claims["oid"])
	}
}

func decodePart(t *testing.T, part string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatalf("decoding %q: %v", part, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
}

func TestValidateTokenTampering(t *testing.T) {
	f := newFixture(t)
	tok := appAccessToken(t, f)
	parts := strings.Split(tok, ".")
	var claims map[string]any
	decodePart(t, parts[1], &claims)
	claims["roles"] = []string{"IMAP.AccessAsApp", "full_access_as_app"}
	forged, _ := json.Marshal(claims)
	flipped := []byte(parts[2])
	if flipped[10] == 'A' {
		flipped[10] = 'B'
	} else {
		flipped[10] = 'A'
	}

	other, err := NewEntra(EntraOptions{})
	if err != nil {
		t.Fatalf("NewEntra: %v", err)
	}
	defer other.Close()
	foreign, err := signJWT(other.key, f.e.KeyID(), claims)
	if err != nil {
		t.Fatalf("signJWT: %v", err)
	}
	noneHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"JWT","alg":"none","kid":"` + f.e.KeyID() + `"}`))

	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"untouched", tok, nil},
		{"claims changed", parts[0] + "." + base64.RawURLEncoding.EncodeToString(forged) + "." + parts[2], ErrTokenSignature},
		{"signature changed", parts[0] + "." + parts[1] + "." + string(flipped), ErrTokenSignature},
		{"signed by another key", foreign, ErrTokenSignature},
		{"alg none", noneHeader + "." + parts[1] + ".", ErrTokenSignature},
		{"two parts", parts[0] + "." + parts[1], ErrTokenMalformed},
		{"not base64", parts[0] + ".!!!." + parts[2], ErrTokenMalformed},
		{"empty", "", ErrTokenMalformed},
	}
	for _, tt := range tests {
		if _, err := f.e.ValidateToken(tt.token); !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestValidateTokenTime(t *testing.T) {
	f := newFixture(t)
	tok := appAccessToken(t, f)
	tests := []struct {
		name    string
		advance time.Duration
		want    error
	}{
		{"fresh", 0, nil},
		{"one second before exp", 75*time.Minute - time.Second, nil},
		{"at exp", time.Second, ErrTokenExpired},
		{"long after", 24 * time.Hour, ErrTokenExpired},
		{"clock back before nbf", -24*time.Hour - 81*time.Minute, ErrTokenNotYetValid},
	}
	for _, tt := range tests {
		f.clock.Add(tt.advance)
		if _, err := f.e.ValidateToken(tok); !errors.Is(err, tt.want) {
			t.Fatalf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestValidateTokenIssuer(t *testing.T) {
	f := newFixture(t)
	now := f.clock.Now()
	base := accessClaims{Aud: outlook.aud, Iat: now.Unix(), Nbf: now.Unix(), Exp: now.Add(time.Hour).Unix(), IDType: "app", Ver: "1.0"}
	unknown := NewGUID()
	tests := []struct {
		name     string
		iss, tid string
		want     error
	}{
		{"known tenant", f.e.Issuer(f.tid), f.tid, nil},
		{"tid differs from issuer", f.e.Issuer(f.tid), unknown, ErrTokenIssuer},
		{"unknown tenant", f.e.Issuer(unknown), unknown, ErrTokenIssuer},
		{"v2 issuer", "https://login.microsoftonline.com/" + f.tid + "/v2.0", f.tid, ErrTokenIssuer},
	}
	for _, tt := range tests {
		c := base
		c.Iss, c.TID = tt.iss, tt.tid
		tok, err := signJWT(f.e.key, f.e.kid, c)
		if err != nil {
			t.Fatalf("signJWT: %v", err)
		}
		if _, err := f.e.ValidateToken(tok); !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}
