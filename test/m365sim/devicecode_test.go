package m365sim

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func (f *fixture) oauth2Config(clientID string) *oauth2.Config {
	base := f.e.URL() + "/" + domain + "/oauth2/v2.0/"
	return &oauth2.Config{
		ClientID: clientID,
		Endpoint: oauth2.Endpoint{
			DeviceAuthURL: base + "devicecode",
			TokenURL:      base + "token",
			AuthStyle:     oauth2.AuthStyleInParams,
		},
		Scopes: strings.Fields(userScope),
	}
}

func poll(clientID, deviceCode string) url.Values {
	return form("grant_type", "urn:ietf:params:oauth:grant-type:device_code", "client_id", clientID, "device_code", deviceCode)
}

func TestDeviceCodeFlow(t *testing.T) {
	f := newFixture(t)
	da, err := f.oauth2Config(publicID).DeviceAuth(context.Background())
	if err != nil {
		t.Fatalf("DeviceAuth: %v", err)
	}
	if len(da.UserCode) != 9 || da.VerificationURI != f.e.URL()+"/devicelogin" || da.Interval != 5 || da.DeviceCode == "" {
		t.Fatalf("device auth: got %+v", da)
	}

	expectErr := func(name, wantErr string, wantCode int) {
		t.Helper()
		status, eb := f.tokenError(t, domain, poll(publicID, da.DeviceCode))
		t.Run(name, func(t *testing.T) { checkError(t, status, eb, 400, wantErr, wantCode) })
	}
	expectErr("first poll", "authorization_pending", 70016)
	expectErr("poll too soon", "slow_down", 70016)
	f.clock.Add(5 * time.Second)
	expectErr("5 s is now too soon", "slow_down", 70016)
	f.clock.Add(15 * time.Second)
	expectErr("after the longer interval", "authorization_pending", 70016)

	code, err := f.e.WaitDeviceCode(context.Background())
	if err != nil || code != da.UserCode {
		t.Fatalf("WaitDeviceCode: got %q, %v; want %q", code, err, da.UserCode)
	}
	if err := f.e.ApproveDeviceCode(code, "carol@contoso.onmicrosoft.com"); err == nil {
		t.Fatalf("approving for an unknown user: got nil, want an error")
	}
	if err := f.e.ApproveDeviceCode(code[:4]+"-"+strings.ToLower(code[4:]), alice); err != nil {
		t.Fatalf("ApproveDeviceCode: %v", err)
	}
	tr := f.token(t, domain, poll(publicID, da.DeviceCode))
	c, err := f.e.ValidateToken(tr.AccessToken)
	if err != nil {
		t.Fatalf("ValidateToken: %v", err)
	}
	if c.UPN != alice || c.AppID != publicID || tr.RefreshToken == "" {
		t.Fatalf("got upn %q appid %q refresh %q", c.UPN, c.AppID, tr.RefreshToken)
	}
	f.token(t, domain, refresh(tr.RefreshToken))
	expectErr("redeemed twice", "bad_verification_code", 70018)
}

func TestDeviceCodeOutcomes(t *testing.T) {
	f := newFixture(t)
	start := func(clientID string) string {
		t.Helper()
		status, body := post(t, f.e.URL()+"/"+domain+"/oauth2/v2.0/devicecode", form("client_id", clientID, "scope", userScope))
		if status != http.StatusOK {
			t.Fatalf("devicecode: got %d %s", status, body)
		}
		var r deviceCodeResponse
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatalf("decoding %s: %v", body, err)
		}
		if !strings.Contains(r.Message, r.UserCode) || r.ExpiresIn != 900 {
			t.Fatalf("devicecode: got %+v", r)
		}
		return r.DeviceCode
	}
	codeOf := func() string {
		t.Helper()
		c, err := f.e.WaitDeviceCode(context.Background())
		if err != nil {
			t.Fatalf("WaitDeviceCode: %v", err)
		}
		return c
	}

	declined := start(publicID)
	if err := f.e.DeclineDeviceCode(codeOf()); err != nil {
		t.Fatalf("DeclineDeviceCode: %v", err)
	}
	status, eb := f.tokenError(t, domain, poll(publicID, declined))
	checkError(t, status, eb, 400, "authorization_declined", 70000)

	noFlows := start(noFlowsID)
	user := codeOf()
	status, eb = f.tokenError(t, domain, poll(noFlowsID, noFlows))
	checkError(t, status, eb, 401, "invalid_client", 7000218)
	status, eb = f.tokenError(t, domain, poll(publicID, noFlows))
	checkError(t, status, eb, 400, "invalid_grant", 70000)

	f.clock.Add(15 * time.Minute)
	status, eb = f.tokenError(t, domain, poll(noFlowsID, noFlows))
	checkError(t, status, eb, 401, "invalid_client", 7000218)
	expired := start(publicID)
	f.clock.Add(15 * time.Minute)
	status, eb = f.tokenError(t, domain, poll(publicID, expired))
	checkError(t, status, eb, 400, "expired_token", 70020)
	if err := f.e.ApproveDeviceCode(user, alice); err == nil {
		t.Fatalf("approving an expired code: got nil, want an error")
	}

	status, body := post(t, f.e.URL()+"/"+domain+"/oauth2/v2.0/devicecode", form("client_id", publicID))
	checkError(t, status, decodeError(t, status, body), 400, "invalid_request", 900144)
	status, body = post(t, f.e.URL()+"/common/oauth2/v2.0/devicecode", form("client_id", publicID, "scope", userScope))
	checkError(t, status, decodeError(t, status, body), 400, "invalid_request", 50194)
}

// TestDeviceAccessToken runs x/oauth2's own polling loop, which waits one
// interval (5 s) before its first poll.
func TestDeviceAccessToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cfg := f.oauth2Config(publicID)
	da, err := cfg.DeviceAuth(context.Background())
	if err != nil {
		t.Fatalf("DeviceAuth: %v", err)
	}
	if err := f.e.ApproveDeviceCode(da.UserCode, alice); err != nil {
		t.Fatalf("ApproveDeviceCode: %v", err)
	}
	tok, err := cfg.DeviceAccessToken(context.Background(), da)
	if err != nil {
		t.Fatalf("DeviceAccessToken: %v", err)
	}
	if c, err := f.e.ValidateToken(tok.AccessToken); err != nil || c.UPN != alice || tok.RefreshToken == "" {
		t.Fatalf("got %+v, %v; refresh %q", c, err, tok.RefreshToken)
	}
}

func TestDeviceLoginPage(t *testing.T) {
	f := newFixture(t)
	start := func() (deviceCode, userCode string) {
		t.Helper()
		da, err := f.oauth2Config(publicID).DeviceAuth(context.Background())
		if err != nil {
			t.Fatalf("DeviceAuth: %v", err)
		}
		return da.DeviceCode, da.UserCode
	}
	dc, uc := start()
	status, _ := post(t, f.e.URL()+"/devicelogin", form("code", uc, "username", alice, "password", "wrong"))
	if status != http.StatusOK {
		t.Fatalf("devicelogin: got %d", status)
	}
	st, eb := f.tokenError(t, domain, poll(publicID, dc))
	checkError(t, st, eb, 400, "authorization_pending", 70016)
	post(t, f.e.URL()+"/devicelogin", form("code", uc, "username", alice, "password", alicePass))
	if c, err := f.e.ValidateToken(f.token(t, domain, poll(publicID, dc)).AccessToken); err != nil || c.UPN != alice {
		t.Fatalf("after sign-in: got %+v, %v", c, err)
	}
}

// Polling authenticates the client: without public client flows, a secret
// or an assertion is required.
func TestDeviceCodeClientAuthentication(t *testing.T) {
	f := newFixture(t)
	now := f.clock.Now()
	ck := newCertKey(t, now.AddDate(1, 0, 0))
	f.e.AddApp(App{Tenant: domain, ClientID: certAppID, Certificates: []*x509.Certificate{ck.cert}})
	for _, clientID := range []string{noFlowsID, confID, certAppID} {
		status, body := post(t, f.e.URL()+"/"+domain+"/oauth2/v2.0/devicecode", form("client_id", clientID, "scope", userScope))
		if status != 200 {
			t.Fatalf("devicecode for %s: got %d %s", clientID, status, body)
		}
		var da deviceCodeResponse
		if err := json.Unmarshal(body, &da); err != nil {
			t.Fatal(err)
		}
		if err := f.e.ApproveDeviceCode(da.UserCode, alice); err != nil {
			t.Fatalf("ApproveDeviceCode: %v", err)
		}
		status, eb := f.tokenError(t, domain, poll(clientID, da.DeviceCode))
		checkError(t, status, eb, 401, "invalid_client", 7000218)
		var cred []string
		switch clientID {
		case confID:
			cred = []string{"client_secret", secret}
		case certAppID:
			cred = []string{"client_assertion_type", assertionTypeJWT, "client_assertion", ck.assertion(t, nil, map[string]any{
				"aud": f.tokenURL(domain), "iss": certAppID, "sub": certAppID, "jti": "1", "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
			})}
		default:
			continue
		}
		f.token(t, domain, form(append([]string{"grant_type", grantDeviceCode, "client_id", clientID, "device_code", da.DeviceCode}, cred...)...))
	}
}

func TestDeviceCodeFailureInjection(t *testing.T) {
	f := newFixture(t)
	f.e.FailNextAt(EndpointDeviceCode, 1, throttled)
	u := f.e.URL() + "/" + domain + "/oauth2/v2.0/devicecode"
	status, body := post(t, u, form("client_id", publicID, "scope", userScope))
	checkError(t, status, decodeError(t, status, body), 429, "temporarily_unavailable", 50196)
	if status, body = post(t, u, form("client_id", publicID, "scope", userScope)); status != 200 {
		t.Fatalf("after the injected failure: got %d %s", status, body)
	}
	// The token endpoint's failures are its own.
	f.e.SetFailureAt(EndpointDeviceCode, &throttled)
	f.token(t, domain, ccForm())
	status, _ = post(t, u, form("client_id", publicID, "scope", userScope))
	f.e.SetFailureAt(EndpointDeviceCode, nil)
	if status != 429 {
		t.Fatalf("with SetFailureAt: got %d, want 429", status)
	}
}
