package m365sim

import (
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

const userScope = "offline_access https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send"

func ropc(upn, password, scope string) url.Values {
	return form("grant_type", "password", "client_id", publicID, "username", upn, "password", password, "scope", scope)
}

func refresh(rt string, kv ...string) url.Values {
	return form(append([]string{"grant_type", "refresh_token", "client_id", publicID, "refresh_token", rt}, kv...)...)
}

func TestPasswordGrant(t *testing.T) {
	f := newFixture(t)
	tr := f.token(t, domain, ropc("Alice@contoso.onmicrosoft.com", alicePass, userScope+" openid"))
	if want := "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send"; tr.Scope != want {
		t.Fatalf("scope: got %q, want %q", tr.Scope, want)
	}
	if tr.RefreshToken == "" || tr.IDToken == "" {
		t.Fatalf("got refresh_token %q, id_token %q; want both", tr.RefreshToken, tr.IDToken)
	}
	c, err := f.e.ValidateToken(tr.AccessToken)
	if err != nil {
		t.Fatalf("ValidateToken: %v", err)
	}
	if c.IDType != "user" || c.UPN != alice || c.AppID != publicID || !slices.Equal(c.Scopes, []string{"IMAP.AccessAsUser.All", "SMTP.Send"}) || c.Audience != "https://outlook.office.com" {
		t.Fatalf("claims: got %+v", *c)
	}
	var id map[string]any
	decodePart(t, strings.Split(tr.IDToken, ".")[1], &id)
	if id["aud"] != publicID || id["preferred_username"] != alice || id["tid"] != f.tid {
		t.Fatalf("id token: got %v", id)
	}

	noOffline := f.token(t, domain, ropc(alice, alicePass, "https://outlook.office.com/IMAP.AccessAsUser.All"))
	if noOffline.RefreshToken != "" {
		t.Fatalf("refresh token without offline_access: got %q, want none", noOffline.RefreshToken)
	}

	tests := []struct {
		name       string
		tenant     string
		form       url.Values
		wantStatus int
		wantErr    string
		wantCode   int
	}{
		{"wrong password", domain, ropc(alice, "wrong", userScope), 400, "invalid_grant", 50126},
		{"unknown user", domain, ropc("carol@contoso.onmicrosoft.com", "x", userScope), 400, "invalid_grant", 50034},
		{"public client flows off", domain, form("grant_type", "password", "client_id", noFlowsID, "username", alice, "password", alicePass, "scope", userScope), 401, "invalid_client", 7000218},
		{"missing password", domain, ropc(alice, "", userScope), 400, "invalid_request", 900144},
		{"unknown scope", domain, ropc(alice, alicePass, "https://outlook.office.com/IMAP.AccessAsApp"), 400, "invalid_scope", 70011},
		{"graph and outlook", domain, ropc(alice, alicePass, "User.Read https://outlook.office.com/SMTP.Send"), 400, "invalid_scope", 28000},
		{"organizations endpoint", "organizations", ropc(alice, alicePass, userScope), 400, "invalid_request", 50194},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, eb := f.tokenError(t, tt.tenant, tt.form)
			checkError(t, status, eb, tt.wantStatus, tt.wantErr, tt.wantCode)
		})
	}
}

func TestRefreshRotation(t *testing.T) {
	f := newFixture(t)
	rt1 := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	r2 := f.token(t, domain, refresh(rt1))
	if r2.RefreshToken == "" || r2.RefreshToken == rt1 {
		t.Fatalf("refresh token: got %q after %q, want a new one", r2.RefreshToken, rt1)
	}
	if want := "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send"; r2.Scope != want {
		t.Fatalf("scope without scope parameter: got %q, want the original %q", r2.Scope, want)
	}
	if _, err := f.e.ValidateToken(r2.AccessToken); err != nil {
		t.Fatalf("ValidateToken: %v", err)
	}
	// The old refresh token stays valid.
	r3 := f.token(t, domain, refresh(rt1))
	if r3.RefreshToken == rt1 || r3.RefreshToken == r2.RefreshToken {
		t.Fatalf("second refresh of the old token: got %q, want a third token", r3.RefreshToken)
	}

	// Another resource with the same refresh token, as for a Graph presence
	// connector.
	g := f.token(t, domain, refresh(r2.RefreshToken, "scope", "https://graph.microsoft.com/Presence.Read offline_access"))
	c, err := f.e.ValidateToken(g.AccessToken)
	if err != nil {
		t.Fatalf("ValidateToken: %v", err)
	}
	if c.Audience != "https://graph.microsoft.com" || !slices.Equal(c.Scopes, []string{"Presence.Read"}) || g.Scope != "Presence.Read" {
		t.Fatalf("graph refresh: got aud %q scopes %v scope %q", c.Audience, c.Scopes, g.Scope)
	}
	// A refresh token from a Graph refresh still yields the original scope.
	back := f.token(t, domain, refresh(g.RefreshToken))
	if c, err := f.e.ValidateToken(back.AccessToken); err != nil || c.Audience != "https://outlook.office.com" {
		t.Fatalf("refresh after graph: got %+v, %v; want an outlook token", c, err)
	}
}

func TestRefreshErrors(t *testing.T) {
	f := newFixture(t)
	rt := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	check := func(name string, form url.Values, wantStatus int, wantErr string, wantCode int) {
		t.Helper()
		status, eb := f.tokenError(t, domain, form)
		t.Run(name, func(t *testing.T) { checkError(t, status, eb, wantStatus, wantErr, wantCode) })
	}
	check("unknown token", refresh("0.Anonsense"), 400, "invalid_grant", 9002313)
	check("missing token", refresh(""), 400, "invalid_request", 900144)
	check("other client", form("grant_type", "refresh_token", "client_id", confID, "client_secret", secret, "refresh_token", rt), 400, "invalid_grant", 70000)

	// 89 days on, the token works and its successor starts a fresh window.
	f.clock.Add(89 * 24 * time.Hour)
	fresh := f.token(t, domain, refresh(rt)).RefreshToken
	f.clock.Add(2 * 24 * time.Hour)
	check("idle 90 days", refresh(rt), 400, "invalid_grant", 700082)
	rotated := f.token(t, domain, refresh(fresh)).RefreshToken

	if err := f.e.RevokeSessions(domain, alice); err != nil {
		t.Fatalf("RevokeSessions: %v", err)
	}
	check("revoked", refresh(rotated), 400, "invalid_grant", 50173)
	after := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	f.token(t, domain, refresh(after))
}
