package broker

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mailbroker/broker/config"
)

// fakeJWT makes an unsigned token with claims as its payload.
func fakeJWT(t *testing.T, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc(payload) + ".c2lnbmF0dXJl"
}

func doctorAccount(flow config.Flow, cloud string) *config.Account {
	c := config.CloudByName(cloud)
	a := &config.Account{
		Mailbox: "support@contoso.com",
		Flow:    flow,
		App:     &config.App{Name: "contoso", ClientID: "11111111-2222-3333-4444-555555555555", Cloud: c},
		Scopes:  config.DefaultScopes(flow, c),
	}
	if a.Delegated() {
		a.LoginUser = a.Mailbox
	}
	return a
}

func TestDecodeTokenClaims(t *testing.T) {
	tok := fakeJWT(t, map[string]any{
		"aud": "https://outlook.office365.com", "roles": []string{"IMAP.AccessAsApp"}, "idtyp": "app",
		"appid": "11111111-2222-3333-4444-555555555555", "exp": 1700000000,
	})
	c, err := DecodeTokenClaims(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Audience != "https://outlook.office365.com" || len(c.Roles) != 1 || c.IDType != "app" || c.Expires != 1700000000 {
		t.Fatalf("claims %+v", c)
	}
	// aud as a list, scp split.
	c, err = DecodeTokenClaims(fakeJWT(t, map[string]any{"aud": []string{"https://outlook.office.com"}, "scp": "IMAP.AccessAsUser.All  SMTP.Send"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Audience != "https://outlook.office.com" || strings.Join(c.Scopes(), ",") != "IMAP.AccessAsUser.All,SMTP.Send" {
		t.Fatalf("claims %+v", c)
	}
	for _, bad := range []string{"", "opaque-token", "a.b", "a.!!!.c", "a." + base64.RawURLEncoding.EncodeToString([]byte("not json")) + ".c"} {
		if _, err := DecodeTokenClaims(bad); err == nil {
			t.Errorf("DecodeTokenClaims(%q) succeeded", bad)
		}
	}
}

func TestCheckTokenPermissions(t *testing.T) {
	app := doctorAccount(config.FlowClientCredentials, "global")
	deleg := doctorAccount(config.FlowDeviceCode, "global")
	narrow := doctorAccount(config.FlowDeviceCode, "global")
	narrow.Scopes = []string{"offline_access", "https://outlook.office.com/SMTP.Send"}
	gov := doctorAccount(config.FlowClientCredentials, "usgovhigh")
	tests := []struct {
		name             string
		acct             *config.Account
		claims           map[string]any
		imap, smtp       bool
		ok               bool
		missIMAP, missSM string
		problem, fix     []string
	}{
		{name: "app-only, both roles", acct: app, imap: true, smtp: true, ok: true,
			claims: map[string]any{"aud": "https://outlook.office365.com", "roles": []string{"IMAP.AccessAsApp", "SMTP.SendAsApp"}}},
		{name: "app-only, audience as GUID", acct: app, imap: true, ok: true,
			claims: map[string]any{"aud": "00000002-0000-0ff1-ce00-000000000000", "roles": []string{"IMAP.AccessAsApp"}}},
		{name: "app-only, no roles at all", acct: app, imap: true, smtp: true, missIMAP: "IMAP.AccessAsApp", missSM: "SMTP.SendAsApp",
			claims:  map[string]any{"aud": "https://outlook.office365.com"},
			problem: []string{"lacks IMAP.AccessAsApp and SMTP.SendAsApp", "roles: none"},
			fix:     []string{"application permission IMAP.AccessAsApp and SMTP.SendAsApp", "Office 365 Exchange Online > Application permissions", "Grant admin consent", "broker logout support@contoso.com"}},
		{name: "app-only, SMTP not configured", acct: app, imap: true, ok: true,
			claims: map[string]any{"aud": "https://outlook.office365.com", "roles": []string{"IMAP.AccessAsApp"}}},
		{name: "app-only, Mail.Send instead of SMTP.SendAsApp", acct: app, imap: true, smtp: true, missSM: "SMTP.SendAsApp",
			claims: map[string]any{"aud": "https://outlook.office365.com", "roles": []string{"IMAP.AccessAsApp", "Mail.Send"}},
			fix:    []string{"SMTP.SendAsApp", "Mail.Send is Graph's"}},
		{name: "app-only, Graph audience", acct: app, imap: true, smtp: true, missIMAP: "IMAP.AccessAsApp", missSM: "SMTP.SendAsApp",
			claims:  map[string]any{"aud": "https://graph.microsoft.com", "roles": []string{"Mail.Send"}},
			problem: []string{"Microsoft Graph"}, fix: []string{"https://outlook.office365.com/.default"}},
		{name: "delegated, both scopes", acct: deleg, imap: true, smtp: true, ok: true,
			claims: map[string]any{"aud": "https://outlook.office.com", "scp": "IMAP.AccessAsUser.All SMTP.Send"}},
		{name: "delegated, IMAP scope not consented", acct: deleg, imap: true, smtp: true, missIMAP: "IMAP.AccessAsUser.All",
			claims:  map[string]any{"aud": "https://outlook.office.com", "scp": "SMTP.Send"},
			problem: []string{"lacks IMAP.AccessAsUser.All", "scopes: SMTP.Send"},
			fix:     []string{"delegated permission IMAP.AccessAsUser.All", "Microsoft Graph > Delegated permissions", "broker login support@contoso.com"}},
		{name: "delegated, IMAP scope not configured", acct: narrow, imap: true, smtp: true, missIMAP: "IMAP.AccessAsUser.All",
			claims: map[string]any{"aud": "https://outlook.office.com", "scp": "SMTP.Send"},
			fix:    []string{"Add https://outlook.office.com/IMAP.AccessAsUser.All to the scopes of account support@contoso.com in broker.toml"}},
		{name: "delegated, Graph token", acct: deleg, imap: true, smtp: true,
			claims:  map[string]any{"aud": "00000003-0000-0000-c000-000000000000", "scp": "IMAP.AccessAsUser.All SMTP.Send"},
			problem: []string{"Microsoft Graph"}, fix: []string{"not Graph's", "broker login"}},
		{name: "US Gov High audience", acct: gov, imap: true, ok: true,
			claims: map[string]any{"aud": "https://outlook.office365.us", "roles": []string{"IMAP.AccessAsApp"}}},
		{name: "global audience in US Gov High", acct: gov, imap: true,
			claims:  map[string]any{"aud": "https://outlook.office.com", "roles": []string{"IMAP.AccessAsApp"}},
			problem: []string{"not Exchange Online (https://outlook.office365.us)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _, err := CheckTokenPermissions(tt.acct, fakeJWT(t, tt.claims), tt.imap, tt.smtp)
			if err != nil {
				t.Fatal(err)
			}
			if p.OK() != tt.ok || p.MissingIMAP != tt.missIMAP || p.MissingSMTP != tt.missSM {
				t.Fatalf("got ok=%v missing %q %q, want ok=%v missing %q %q", p.OK(), p.MissingIMAP, p.MissingSMTP, tt.ok, tt.missIMAP, tt.missSM)
			}
			if tt.ok {
				if p.Problem() != "" || p.Fix() != "" {
					t.Fatalf("problem %q, fix %q for a good token", p.Problem(), p.Fix())
				}
				return
			}
			for _, s := range tt.problem {
				if !strings.Contains(p.Problem(), s) {
					t.Errorf("problem %q lacks %q", p.Problem(), s)
				}
			}
			for _, s := range tt.fix {
				if !strings.Contains(p.Fix(), s) {
					t.Errorf("fix %q lacks %q", p.Fix(), s)
				}
			}
			if p.Fix() == "" || strings.Count(p.Fix(), ". ") > 0 {
				t.Errorf("fix %q: want one sentence", p.Fix())
			}
		})
	}
	if _, _, err := CheckTokenPermissions(app, "opaque", true, true); err == nil {
		t.Error("an opaque token was read")
	}
}

func TestCheckTokenPermissionsPOP3(t *testing.T) {
	app := doctorAccount(config.FlowClientCredentials, "global")
	deleg := doctorAccount(config.FlowDeviceCode, "global")
	// With [pop3], a delegated account asks for POP.AccessAsUser.All too.
	deleg.Scopes = config.AccountScopes(deleg.Flow, deleg.App.Cloud, true)
	narrow := doctorAccount(config.FlowDeviceCode, "global")
	narrow.Scopes = []string{"offline_access", "https://outlook.office.com/IMAP.AccessAsUser.All"}
	all := PermissionNeeds{IMAP: true, POP3: true}
	tests := []struct {
		name     string
		acct     *config.Account
		claims   map[string]any
		need     PermissionNeeds
		missPOP3 string
		fix      []string
	}{
		{name: "app-only with POP.AccessAsApp", acct: app, need: all,
			claims: map[string]any{"aud": "https://outlook.office365.com", "roles": []string{"IMAP.AccessAsApp", "POP.AccessAsApp"}}},
		{name: "app-only without", acct: app, need: all, missPOP3: "POP.AccessAsApp",
			claims: map[string]any{"aud": "https://outlook.office365.com", "roles": []string{"IMAP.AccessAsApp"}},
			fix:    []string{"application permission POP.AccessAsApp", "Office 365 Exchange Online > Application permissions"}},
		{name: "app-only, [pop3] not configured", acct: app, need: PermissionNeeds{IMAP: true},
			claims: map[string]any{"aud": "https://outlook.office365.com", "roles": []string{"IMAP.AccessAsApp"}}},
		{name: "delegated with POP.AccessAsUser.All", acct: deleg, need: all,
			claims: map[string]any{"aud": "https://outlook.office.com", "scp": "IMAP.AccessAsUser.All POP.AccessAsUser.All"}},
		{name: "delegated without", acct: deleg, need: all, missPOP3: "POP.AccessAsUser.All",
			claims: map[string]any{"aud": "https://outlook.office.com", "scp": "IMAP.AccessAsUser.All"},
			fix:    []string{"delegated permission POP.AccessAsUser.All", "broker login support@contoso.com"}},
		{name: "delegated, not in the configured scopes", acct: narrow, need: all, missPOP3: "POP.AccessAsUser.All",
			claims: map[string]any{"aud": "https://outlook.office.com", "scp": "IMAP.AccessAsUser.All"},
			fix:    []string{"Add https://outlook.office.com/POP.AccessAsUser.All to the scopes of account support@contoso.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _, err := CheckTokenPermissionsFor(tt.acct, fakeJWT(t, tt.claims), tt.need)
			if err != nil {
				t.Fatal(err)
			}
			if p.MissingPOP3 != tt.missPOP3 || p.OK() != (tt.missPOP3 == "") {
				t.Fatalf("got ok=%v missing POP3 %q, want %q", p.OK(), p.MissingPOP3, tt.missPOP3)
			}
			if tt.missPOP3 != "" && !strings.Contains(p.Problem(), "lacks "+tt.missPOP3) {
				t.Errorf("problem %q", p.Problem())
			}
			for _, s := range tt.fix {
				if !strings.Contains(p.Fix(), s) {
					t.Errorf("fix %q lacks %q", p.Fix(), s)
				}
			}
		})
	}
}
