package m365sim

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

func TestClientCredentials(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name   string
		tenant string
		scope  string
		style  oauth2.AuthStyle
	}{
		{"secret in body", domain, outlookDef, oauth2.AuthStyleInParams},
		{"basic auth", domain, outlookDef, oauth2.AuthStyleInHeader},
		{"tenant by id", f.tid, outlookDef, oauth2.AuthStyleInParams},
		{"outlook.office.com", domain, "https://outlook.office.com/.default", oauth2.AuthStyleInParams},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := clientcredentials.Config{
				ClientID:     confID,
				ClientSecret: secret,
				TokenURL:     f.tokenURL(tt.tenant),
				Scopes:       []string{tt.scope},
				AuthStyle:    tt.style,
			}
			tok, err := cfg.Token(context.Background())
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if tok.TokenType != "Bearer" {
				t.Fatalf("token_type: got %q, want Bearer", tok.TokenType)
			}
			c, err := f.e.ValidateToken(tok.AccessToken)
			if err != nil {
				t.Fatalf("ValidateToken: %v", err)
			}
			want := Claims{
				Issuer:    "https://sts.windows.net/" + f.tid + "/",
				Audience:  "https://outlook.office.com",
				TenantID:  f.tid,
				AppID:     confID,
				IDType:    "app",
				Roles:     []string{"IMAP.AccessAsApp", "SMTP.SendAsApp"},
				ExpiresAt: f.clock.Now().Add(DefaultTokenLifetime),
			}
			if c.Issuer != want.Issuer || c.Audience != want.Audience || c.TenantID != want.TenantID ||
				c.AppID != want.AppID || c.IDType != want.IDType || !slices.Equal(c.Roles, want.Roles) ||
				!c.ExpiresAt.Equal(want.ExpiresAt) || c.UPN != "" || len(c.Scopes) != 0 {
				t.Fatalf("claims: got %+v, want %+v", *c, want)
			}
			if !isGUID(c.ObjectID) {
				t.Fatalf("oid: got %q, want a GUID", c.ObjectID)
			}
		})
	}
}

func TestClientCredentialsResponse(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		scope     string
		wantAud   string
		wantRoles []string
	}{
		{outlookDef, "https://outlook.office.com", []string{"IMAP.AccessAsApp", "SMTP.SendAsApp"}},
		{"https://graph.microsoft.com/.default", "https://graph.microsoft.com", []string{"Mail.Send"}},
	}
	for _, tt := range tests {
		status, body := post(t, f.tokenURL(domain), form("grant_type", "client_credentials", "client_id", confID, "client_secret", secret, "scope", tt.scope))
		if status != http.StatusOK {
			t.Fatalf("%s: got %d %s, want 200", tt.scope, status, body)
		}
		var raw map[string]any
		if err := json.Unmarshal(body, &raw); err != nil {
			t.Fatalf("decoding %s: %v", body, err)
		}
		for k, want := range map[string]any{"token_type": "Bearer", "expires_in": 4500.0, "ext_expires_in": 4500.0} {
			if raw[k] != want {
				t.Fatalf("%s: got %v, want %v", k, raw[k], want)
			}
		}
		for _, k := range []string{"refresh_token", "scope", "id_token"} {
			if _, ok := raw[k]; ok {
				t.Fatalf("%s: client credentials answer has %s", tt.scope, k)
			}
		}
		c, err := f.e.ValidateToken(raw["access_token"].(string))
		if err != nil {
			t.Fatalf("ValidateToken: %v", err)
		}
		if c.Audience != tt.wantAud || !slices.Equal(c.Roles, tt.wantRoles) {
			t.Fatalf("%s: got aud %q roles %v, want %q %v", tt.scope, c.Audience, c.Roles, tt.wantAud, tt.wantRoles)
		}
	}
}

func TestTokenErrors(t *testing.T) {
	f := newFixture(t)
	f.e.AddApp(App{Tenant: domain, ClientID: "99999999-aaaa-4bbb-8ccc-dddddddddddd", Secret: "old", SecretExpires: f.clock.Now()})
	cc := func(kv ...string) url.Values {
		v := form("grant_type", "client_credentials", "client_id", confID, "client_secret", secret, "scope", outlookDef)
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				v.Del(kv[i])
			} else {
				v.Set(kv[i], kv[i+1])
			}
		}
		return v
	}
	tests := []struct {
		name       string
		tenant     string
		form       url.Values
		wantStatus int
		wantErr    string
		wantCode   int
	}{
		{"unknown tenant domain", "fabrikam.onmicrosoft.com", cc(), 400, "invalid_request", 90002},
		{"unknown tenant id", NewGUID(), cc(), 400, "invalid_request", 90002},
		{"unknown client", domain, cc("client_id", NewGUID()), 400, "unauthorized_client", 700016},
		{"missing client_id", domain, cc("client_id", ""), 400, "invalid_request", 900144},
		{"wrong secret", domain, cc("client_secret", "1f0e7a34-secret-id"), 401, "invalid_client", 7000215},
		{"missing secret", domain, cc("client_secret", ""), 401, "invalid_client", 7000218},
		{"expired secret", domain, cc("client_id", "99999999-aaaa-4bbb-8ccc-dddddddddddd", "client_secret", "old"), 401, "invalid_client", 7000222},
		{"public client sends secret", domain, cc("client_id", publicID), 401, "invalid_client", 700025},
		{"public client without secret", domain, cc("client_id", publicID, "client_secret", ""), 401, "invalid_client", 7000218},
		{"malformed client assertion", domain, cc("client_secret", "", "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion", "x.y.z"), 401, "invalid_client", 50027},
		{"permission instead of .default", domain, cc("scope", "https://outlook.office365.com/IMAP.AccessAsApp"), 400, "invalid_scope", 1002012},
		{".default with offline_access", domain, cc("scope", outlookDef+" offline_access"), 400, "invalid_scope", 70011},
		{"mixed resources", domain, cc("scope", outlookDef+" https://graph.microsoft.com/.default"), 400, "invalid_scope", 28000},
		{"unknown resource", domain, cc("scope", "https://mail.example.com/.default"), 400, "invalid_resource", 500011},
		{"missing scope", domain, cc("scope", ""), 400, "invalid_request", 900144},
		{"missing grant_type", domain, cc("grant_type", ""), 400, "invalid_request", 900144},
		{"unsupported grant", domain, cc("grant_type", "urn:example:magic"), 400, "unsupported_grant_type", 70003},
		{"single-tenant app on /common", "common", cc(), 400, "invalid_request", 50194},
		{"single-tenant app on /organizations", "organizations", cc(), 400, "invalid_request", 50194},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, eb := f.tokenError(t, tt.tenant, tt.form)
			checkError(t, status, eb, tt.wantStatus, tt.wantErr, tt.wantCode)
		})
	}
}

func TestTokenErrorDetails(t *testing.T) {
	f := newFixture(t)
	v := form("grant_type", "client_credentials", "client_id", confID, "client_secret", "wrong", "scope", outlookDef)
	req, err := http.NewRequest(http.MethodPost, f.tokenURL(domain), strings.NewReader(v.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	const corr = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	req.Header.Set("client-request-id", corr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	var eb errorBody
	if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
		t.Fatalf("decoding: %v", err)
	}
	checkError(t, resp.StatusCode, &eb, 401, "invalid_client", 7000215)
	if eb.CorrelationID != corr || resp.Header.Get("client-request-id") != corr {
		t.Fatalf("correlation_id: got %q (header %q), want %q", eb.CorrelationID, resp.Header.Get("client-request-id"), corr)
	}
	if want := "2026-11-21 10:00:00Z"; eb.Timestamp != want {
		t.Fatalf("timestamp: got %q, want %q", eb.Timestamp, want)
	}
	if want := "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID"; !strings.HasPrefix(eb.ErrorDescription, want) {
		t.Fatalf("error_description: got %q, want prefix %q", eb.ErrorDescription, want)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Fatalf("Content-Type: got %q", ct)
	}

	get, err := http.Get(f.tokenURL(domain))
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer get.Body.Close()
	if err := json.NewDecoder(get.Body).Decode(&eb); err != nil {
		t.Fatalf("decoding: %v", err)
	}
	checkError(t, get.StatusCode, &eb, 400, "invalid_request", 900561)
}

func TestRetrieveErrorFromOAuth2(t *testing.T) {
	f := newFixture(t)
	cfg := clientcredentials.Config{ClientID: confID, ClientSecret: "wrong", TokenURL: f.tokenURL(domain), Scopes: []string{outlookDef}, AuthStyle: oauth2.AuthStyleInParams}
	_, err := cfg.Token(context.Background())
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("got %v, want *oauth2.RetrieveError", err)
	}
	if re.ErrorCode != "invalid_client" || re.Response.StatusCode != 401 {
		t.Fatalf("got %q %d, want invalid_client 401", re.ErrorCode, re.Response.StatusCode)
	}
	var eb errorBody
	if err := json.Unmarshal(re.Body, &eb); err != nil || !slices.Equal(eb.ErrorCodes, []int{7000215}) {
		t.Fatalf("body error_codes: got %v (%v), want [7000215]", eb.ErrorCodes, err)
	}
}

func TestMayAccess(t *testing.T) {
	f := newFixture(t)
	appToken := func(scope string) *Claims {
		t.Helper()
		tr := f.token(t, domain, form("grant_type", "client_credentials", "client_id", confID, "client_secret", secret, "scope", scope))
		c, err := f.e.ValidateToken(tr.AccessToken)
		if err != nil {
			t.Fatalf("ValidateToken: %v", err)
		}
		return c
	}
	userToken := func(upn, password, scope string) *Claims {
		t.Helper()
		tr := f.token(t, domain, form("grant_type", "password", "client_id", publicID, "username", upn, "password", password, "scope", scope))
		c, err := f.e.ValidateToken(tr.AccessToken)
		if err != nil {
			t.Fatalf("ValidateToken: %v", err)
		}
		return c
	}
	app := appToken(outlookDef)
	graphApp := appToken("https://graph.microsoft.com/.default")
	user := userToken(alice, alicePass, "https://outlook.office.com/IMAP.AccessAsUser.All")
	graphUser := userToken(alice, alicePass, "https://graph.microsoft.com/IMAP.AccessAsUser.All")
	tests := []struct {
		name    string
		c       *Claims
		mailbox string
		role    string
		want    error
	}{
		{"app, granted mailbox", app, alice, "IMAP.AccessAsApp", nil},
		{"app, mailbox case", app, "Alice@Contoso.onmicrosoft.com", "SMTP.SendAsApp", nil},
		{"app, other mailbox", app, bob, "IMAP.AccessAsApp", ErrNoMailboxAccess},
		{"app, role not granted", app, alice, "POP.AccessAsApp", ErrTokenNoPermission},
		{"app, graph token", graphApp, alice, "IMAP.AccessAsApp", ErrTokenAudience},
		{"user, own mailbox", user, alice, "IMAP.AccessAsUser.All", nil},
		{"user, other mailbox", user, bob, "IMAP.AccessAsUser.All", ErrNoMailboxAccess},
		{"user, scope missing", user, alice, "SMTP.Send", ErrTokenNoPermission},
		{"user, graph token", graphUser, alice, "IMAP.AccessAsUser.All", ErrTokenAudience},
	}
	for _, tt := range tests {
		if err := f.e.MayAccess(tt.c, tt.mailbox, tt.role); !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}

	// A later grant in Exchange takes effect for tokens already issued.
	f.e.AddApp(App{Tenant: domain, ClientID: confID, Secret: secret, Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{alice, bob}})
	if err := f.e.MayAccess(app, bob, "IMAP.AccessAsApp"); err != nil {
		t.Fatalf("after granting bob: got %v, want nil", err)
	}
}

func TestTokenLifetime(t *testing.T) {
	f := newFixture(t)
	get := func() int64 {
		t.Helper()
		return f.token(t, domain, form("grant_type", "client_credentials", "client_id", confID, "client_secret", secret, "scope", outlookDef)).ExpiresIn
	}
	if got := get(); got != 4500 {
		t.Fatalf("default: got %d, want 4500", got)
	}
	f.e.SetTokenLifetime(10 * time.Minute)
	if got := get(); got != 600 {
		t.Fatalf("after SetTokenLifetime(10m): got %d, want 600", got)
	}
	f.e.SetTokenLifetime(0)
	if got := get(); got != 4500 {
		t.Fatalf("after SetTokenLifetime(0): got %d, want 4500", got)
	}
}

func TestTokenLifetimeJitter(t *testing.T) {
	e, err := NewEntra(EntraOptions{Jitter: true})
	if err != nil {
		t.Fatalf("NewEntra: %v", err)
	}
	defer e.Close()
	seen := map[time.Duration]bool{}
	for range 50 {
		d := e.tokenLifetime()
		if d < 60*time.Minute || d > 90*time.Minute {
			t.Fatalf("got %v, want 60-90 minutes", d)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Fatalf("got %d distinct lifetimes in 50, want variation", len(seen))
	}
}

func TestDiscovery(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Get(f.e.URL() + "/" + domain + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer        string `json:"issuer"`
		TokenEndpoint string `json:"token_endpoint"`
		JWKSURI       string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("decoding: %v", err)
	}
	if doc.TokenEndpoint != f.tokenURL(domain) || doc.Issuer != "https://login.microsoftonline.com/"+f.tid+"/v2.0" {
		t.Fatalf("got %+v", doc)
	}
	keys, err := http.Get(doc.JWKSURI)
	if err != nil {
		t.Fatalf("GET keys: %v", err)
	}
	defer keys.Body.Close()
	var set struct {
		Keys []struct{ Kid, Kty string } `json:"keys"`
	}
	if err := json.NewDecoder(keys.Body).Decode(&set); err != nil {
		t.Fatalf("decoding keys: %v", err)
	}
	if len(set.Keys) != 1 || set.Keys[0].Kid != f.e.KeyID() || set.Keys[0].Kty != "RSA" {
		t.Fatalf("keys: got %+v, want one RSA key %s", set.Keys, f.e.KeyID())
	}
}
