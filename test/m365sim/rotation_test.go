package m365sim

import (
	"slices"
	"strings"
	"testing"
)

func TestRefreshTokenReuse(t *testing.T) {
	f := newFixture(t)
	rt1 := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	// Always the newest: no reuse.
	rt2 := f.token(t, domain, refresh(rt1)).RefreshToken
	rt3 := f.token(t, domain, refresh(rt2)).RefreshToken
	if n := f.e.RefreshTokenReuse(); n != 0 {
		t.Fatalf("RefreshTokenReuse after a clean chain: got %d, want 0", n)
	}
	// A client that lost rt3 (say, crashed before storing it) goes back to
	// rt2: Entra accepts it, and the reuse shows.
	f.token(t, domain, refresh(rt2))
	f.token(t, domain, refresh(rt1))
	if n := f.e.RefreshTokenReuse(); n != 2 {
		t.Fatalf("RefreshTokenReuse: got %d, want 2", n)
	}
	// A failed refresh redeems nothing.
	status, eb := f.tokenError(t, domain, refresh(rt3, "scope", "https://outlook.office.com/Nope"))
	checkError(t, status, eb, 400, "invalid_scope", 70011)
	f.token(t, domain, refresh(rt3))
	if n := f.e.RefreshTokenReuse(); n != 2 {
		t.Fatalf("RefreshTokenReuse after a failed refresh: got %d, want 2", n)
	}

	f.e.SetStrictRefreshRotation(true)
	status, eb = f.tokenError(t, domain, refresh(rt1))
	checkError(t, status, eb, 400, "invalid_grant", 70008)
	if !strings.Contains(eb.ErrorDescription, "strict rotation") {
		t.Fatalf("strict refusal: got %q", eb.ErrorDescription)
	}
	if n := f.e.RefreshTokenReuse(); n != 3 {
		t.Fatalf("RefreshTokenReuse counts strict refusals: got %d, want 3", n)
	}
	fresh := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	next := f.token(t, domain, refresh(fresh)).RefreshToken
	f.token(t, domain, refresh(next))
	f.e.SetStrictRefreshRotation(false)
	f.token(t, domain, refresh(fresh))
}

// Refresh tokens of one sign-in form a family; each sign-in starts one.
func TestRefreshTokenFamilies(t *testing.T) {
	f := newFixture(t)
	rt1 := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	rt2 := f.token(t, domain, refresh(rt1)).RefreshToken
	other := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	f.e.mu.Lock()
	defer f.e.mu.Unlock()
	g1, g2, g3 := f.e.grants[rt1], f.e.grants[rt2], f.e.grants[other]
	if g1.family == "" || g1.family != g2.family || g3.family == g1.family {
		t.Fatalf("families: got %q, %q, %q; want the first two equal, the third another", g1.family, g2.family, g3.family)
	}
}

// .default in a refresh asks for every consented permission of that
// resource, which the simulator takes to be all of them.
func TestRefreshDefaultScope(t *testing.T) {
	f := newFixture(t)
	rt := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	tests := []struct {
		scope, aud string
		want       []string
	}{
		{"https://graph.microsoft.com/.default", "https://graph.microsoft.com", graph.scopes},
		{"https://graph.microsoft.com/.default offline_access", "https://graph.microsoft.com", graph.scopes},
		{"https://outlook.office.com/.default", "https://outlook.office.com", outlook.scopes},
		{"https://graph.microsoft.com/Presence.Read offline_access", "https://graph.microsoft.com", []string{"Presence.Read"}},
	}
	for _, tt := range tests {
		t.Run(tt.scope, func(t *testing.T) {
			tr := f.token(t, domain, refresh(rt, "scope", tt.scope))
			c, err := f.e.ValidateToken(tr.AccessToken)
			if err != nil {
				t.Fatalf("ValidateToken: %v", err)
			}
			if c.Audience != tt.aud || !slices.Equal(c.Scopes, tt.want) || tr.RefreshToken == "" {
				t.Fatalf("got aud %q scopes %v refresh token %q; want %q %v", c.Audience, c.Scopes, tr.RefreshToken, tt.aud, tt.want)
			}
			if tt.aud == "https://graph.microsoft.com" {
				if err := f.e.MayAccess(c, alice, "IMAP.AccessAsUser.All"); err == nil {
					t.Fatalf("MayAccess with a Graph token: got nil, want a wrong audience")
				}
			}
		})
	}
}
