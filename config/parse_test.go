package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, t.TempDir(), "[imap]\n")
	if cfg.StateDir != DefaultStateDir {
		t.Fatalf("got state dir %q, want %q", cfg.StateDir, DefaultStateDir)
	}
	want := Listener{Listen: []string{"127.0.0.1:143"}, Upstream: "outlook.office365.com:993"}
	if got := cfg.IMAP; got == nil || !slices.Equal(got.Listen, want.Listen) || len(got.ListenTLS) != 0 ||
		got.Upstream != want.Upstream || got.UpstreamCAFile != "" || got.TLSCertFile != "" || got.TLSKeyFile != "" {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if len(cfg.Apps) != 0 || len(cfg.Accounts) != 0 || len(cfg.Warnings) != 0 {
		t.Fatalf("got apps %v, accounts %v, warnings %v, want none", cfg.Apps, cfg.Accounts, cfg.Warnings)
	}
}

func TestEmptyFileHasNoIMAP(t *testing.T) {
	cfg := mustParse(t, t.TempDir(), "")
	if cfg.IMAP != nil {
		t.Fatalf("got IMAP %+v, want nil", cfg.IMAP)
	}
}

func TestListenTLSAloneOpensNoPlainPort(t *testing.T) {
	dir := fixture(t)
	cfg := mustParse(t, dir, "[imap]\nlisten_tls = [\"127.0.0.1:993\"]\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"key.pem\"\n")
	if len(cfg.IMAP.Listen) != 0 || !slices.Equal(cfg.IMAP.ListenTLS, []string{"127.0.0.1:993"}) {
		t.Fatalf("got listen %v, listen_tls %v, want none and [127.0.0.1:993]", cfg.IMAP.Listen, cfg.IMAP.ListenTLS)
	}
}

func TestFullConfig(t *testing.T) {
	dir := fixture(t)
	src := `state_dir = "/srv/broker"
[imap]
listen = ["127.0.0.1:143", "[::1]:143"]
listen_tls = [":993"]
tls_cert_file = "cert.pem"
tls_key_file = "key.pem"
upstream_ca_file = "ca.pem"
[[app]]
name = "contoso"
tenant = "Contoso.onmicrosoft.com"
client_id = "ABCDEF00-0000-0000-0000-000000000001"
client_secret_file = "contoso.secret"
[[account]]
mailbox = "Support@Contoso.com"
app = "contoso"
flow = "client_credentials"
[[account]]
mailbox = "sales@contoso.com"
login = "ACD1"
app = "contoso"
flow = "client_credentials"
`
	cfg := mustParse(t, dir, src)
	if cfg.Path != filepath.Join(dir, "broker.toml") || cfg.StateDir != "/srv/broker" {
		t.Fatalf("got path %q, state dir %q", cfg.Path, cfg.StateDir)
	}
	l := cfg.IMAP
	if !slices.Equal(l.Listen, []string{"127.0.0.1:143", "[::1]:143"}) || !slices.Equal(l.ListenTLS, []string{":993"}) {
		t.Fatalf("got listen %v, listen_tls %v", l.Listen, l.ListenTLS)
	}
	if l.TLSCertFile != filepath.Join(dir, "cert.pem") || l.TLSKeyFile != filepath.Join(dir, "key.pem") ||
		l.UpstreamCAFile != filepath.Join(dir, "ca.pem") {
		t.Fatalf("got files %q %q %q", l.TLSCertFile, l.TLSKeyFile, l.UpstreamCAFile)
	}
	app := cfg.AppByName("contoso")
	if app == nil {
		t.Fatal("AppByName(contoso) = nil")
	}
	if app.Tenant != "contoso.onmicrosoft.com" || app.ClientID != "abcdef00-0000-0000-0000-000000000001" ||
		app.ClientSecret != testSecret || app.Cloud.Name != "global" || app.Authority != "https://login.microsoftonline.com" {
		t.Fatalf("got app %+v", app)
	}
	if got, want := app.TokenURL(), "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"; got != want {
		t.Fatalf("got token URL %q, want %q", got, want)
	}
	if len(cfg.Accounts) != 2 {
		t.Fatalf("got %d accounts, want 2", len(cfg.Accounts))
	}
	appScope := []string{"https://outlook.office365.com/.default"}
	for i, want := range []Account{
		{Mailbox: "support@contoso.com", Login: "support@contoso.com", App: app, Flow: FlowClientCredentials, Scopes: appScope},
		{Mailbox: "sales@contoso.com", Login: "acd1", App: app, Flow: FlowClientCredentials, Scopes: appScope},
	} {
		if got := cfg.Accounts[i]; !equalAccount(got, &want) {
			t.Fatalf("account %d: got %+v, want %+v", i, got, want)
		}
	}
	if len(cfg.Warnings) != 0 {
		t.Fatalf("got warnings %q, want none", cfg.Warnings)
	}
}

func TestLookups(t *testing.T) {
	cfg := mustParse(t, fixture(t), contosoApp+supportAccount+
		"[[account]]\nmailbox = \"sales@contoso.com\"\nlogin = \"acd1\"\napp = \"contoso\"\nflow = \"client_credentials\"\n")
	tests := []struct {
		login   string
		mailbox string // "" for no account
	}{
		{"support@contoso.com", "support@contoso.com"},
		{"SUPPORT@Contoso.COM", "support@contoso.com"},
		{"ACD1", "sales@contoso.com"},
		{"sales@contoso.com", ""}, // has a login of its own
		{"nobody", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got := ""
		if a := cfg.AccountByLogin(tt.login); a != nil {
			got = a.Mailbox
		}
		if got != tt.mailbox {
			t.Fatalf("AccountByLogin(%q): got %q, want %q", tt.login, got, tt.mailbox)
		}
	}
	if a := cfg.AppByName("contoso"); a == nil || a.Name != "contoso" {
		t.Fatalf("AppByName(contoso): got %v", a)
	}
	if a := cfg.AppByName("Contoso"); a != nil {
		t.Fatalf("AppByName(Contoso): got %v, want nil: app names are exact", a)
	}
}

func TestClouds(t *testing.T) {
	tests := []struct {
		cloud, authority   string
		wantAuthority      string
		wantUpstream       string
		wantAppResource    string
		wantDelegatedScope string
	}{
		{"", "", "https://login.microsoftonline.com", "outlook.office365.com:993", "https://outlook.office365.com", "https://outlook.office.com"},
		{"global", "", "https://login.microsoftonline.com", "outlook.office365.com:993", "https://outlook.office365.com", "https://outlook.office.com"},
		{"usgovhigh", "", "https://login.microsoftonline.us", "outlook.office365.us:993", "https://outlook.office365.us", "https://outlook.office365.us"},
		{"usgovdod", "", "https://login.microsoftonline.us", "outlook-dod.office365.us:993", "https://outlook-dod.office365.us", "https://outlook-dod.office365.us"},
		{"china", "", "https://login.partner.microsoftonline.cn", "partner.outlook.cn:993", "https://partner.outlook.cn", "https://partner.outlook.cn"},
		{"global", "https://login.example.com/", "https://login.example.com", "outlook.office365.com:993", "https://outlook.office365.com", "https://outlook.office.com"},
		{"global", "http://127.0.0.1:8080", "http://127.0.0.1:8080", "outlook.office365.com:993", "https://outlook.office365.com", "https://outlook.office.com"},
		{"global", "http://[::1]:8080/", "http://[::1]:8080", "outlook.office365.com:993", "https://outlook.office365.com", "https://outlook.office.com"},
		{"global", "http://localhost:8080", "http://localhost:8080", "outlook.office365.com:993", "https://outlook.office365.com", "https://outlook.office.com"},
	}
	dir := fixture(t)
	for _, tt := range tests {
		src := "[imap]\n" + contosoApp
		if tt.cloud != "" {
			src += "cloud = \"" + tt.cloud + "\"\n"
		}
		if tt.authority != "" {
			src += "authority = \"" + tt.authority + "\"\n"
		}
		cfg := mustParse(t, dir, src)
		app := cfg.Apps[0]
		if app.Authority != tt.wantAuthority || cfg.IMAP.Upstream != tt.wantUpstream ||
			app.Cloud.AppResource != tt.wantAppResource || app.Cloud.DelegatedResource != tt.wantDelegatedScope {
			t.Fatalf("cloud %q authority %q: got authority %q, upstream %q, cloud %+v", tt.cloud, tt.authority,
				app.Authority, cfg.IMAP.Upstream, *app.Cloud)
		}
	}
}

func TestUpstreamOverrideAllowsMixedClouds(t *testing.T) {
	src := "[imap]\nupstream = \"imap.example.com:993\"\n" + contosoApp +
		"[[app]]\nname = \"cn\"\ntenant = \"cn.partner.onmschina.cn\"\nclient_id = \"00000000-0000-0000-0000-000000000002\"\ncloud = \"china\"\n"
	cfg := mustParse(t, fixture(t), src)
	if cfg.IMAP.Upstream != "imap.example.com:993" {
		t.Fatalf("got upstream %q, want imap.example.com:993", cfg.IMAP.Upstream)
	}
}

func TestCloudByNameReturnsCopies(t *testing.T) {
	CloudByName("global").IMAPHost = "evil.example.com:993"
	if got := CloudByName("global").IMAPHost; got != "outlook.office365.com:993" {
		t.Fatalf("got %q after altering a copy", got)
	}
	if CloudByName("mars") != nil {
		t.Fatal("CloudByName(mars) != nil")
	}
}

func TestRelativePaths(t *testing.T) {
	dir := fixture(t)
	sub := filepath.Join(dir, "etc")
	for _, name := range []string{"contoso.secret", "cert.pem", "key.pem", "ca.pem"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, sub, filepath.Join("files", name), string(data), 0o600)
	}
	src := `state_dir = "state"
[imap]
tls_cert_file = "files/cert.pem"
tls_key_file = "./files/key.pem"
upstream_ca_file = "files/../files/ca.pem"
[[app]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000001"
client_secret_file = "files/contoso.secret"
`
	writeFile(t, sub, "broker.toml", src, 0o600)
	t.Chdir(dir)
	cfg, err := Load(filepath.Join("etc", "broker.toml"))
	if err != nil {
		t.Fatal(err)
	}
	files := filepath.Join(sub, "files")
	for _, c := range []struct{ got, want string }{
		{cfg.StateDir, filepath.Join(sub, "state")},
		{cfg.IMAP.TLSCertFile, filepath.Join(files, "cert.pem")},
		{cfg.IMAP.TLSKeyFile, filepath.Join(files, "key.pem")},
		{cfg.IMAP.UpstreamCAFile, filepath.Join(files, "ca.pem")},
		{cfg.Apps[0].ClientSecret, testSecret},
		{cfg.Path, filepath.Join("etc", "broker.toml")},
	} {
		if c.got != c.want {
			t.Fatalf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestBadCertificateIsTheOnlyTLSProblem(t *testing.T) {
	_, err := parseIn(t, fixture(t), "[imap]\nlisten_tls = [\":993\"]\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"other-key.pem\"\n")
	if err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want exactly one problem", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "broker.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("got %v, want a not-exist error", err)
	}
}

func TestWarnings(t *testing.T) {
	dir := fixture(t)
	writeFile(t, dir, "shared.secret", testSecret, 0o640)
	writeFile(t, dir, "world.secret", testSecret, 0o604)
	tls := "tls_cert_file = \"cert.pem\"\ntls_key_file = \"key.pem\"\n"
	tests := []struct {
		name string
		src  string
		want string // "" for no warning; else the line must end in "#<"
	}{
		{"loopback", "[imap]\nlisten = [\"127.0.0.1:143\", \"127.9.9.9:143\", \"[::1]:143\", \"localhost:143\"]\n", ""},
		{"all addresses", "[imap]\nlisten = [\n\"127.0.0.1:143\",\n\":143\", #<\n]\n", "imap.listen[2]: \":143\" is not a loopback address and imap has no TLS"},
		{"public address", "[imap]\nlisten = [\"192.0.2.1:143\"] #<\n", "imap.listen[1]: \"192.0.2.1:143\" is not a loopback address"},
		{"public address with STARTTLS", "[imap]\nlisten = [\"192.0.2.1:143\"]\n" + tls, ""},
		{"smtp public address", "[smtp]\nlisten = [\"192.0.2.1:587\"] #<\n", "smtp.listen[1]: \"192.0.2.1:587\" is not a loopback address and smtp has no TLS"},
		{"unauthenticated on loopback", contosoApp + supportAccount + "[smtp]\nlisten = [\"127.0.0.1:587\", \"[::1]:587\"]\n" +
			"allow_unauthenticated_as = \"support@contoso.com\"\n", ""},
		{"unauthenticated on all addresses", contosoApp + supportAccount + "[smtp]\nlisten = [\"127.0.0.1:587\", \":587\"]\n" +
			"listen_tls = [\"192.0.2.1:465\"]\n" + tls + "allow_unauthenticated_as = \"support@contoso.com\" #<\n",
			`smtp.allow_unauthenticated_as: applies to loopback clients only: clients reaching ":587" (smtp.listen[2]), "192.0.2.1:465" (smtp.listen_tls[1]) from other addresses still have to AUTH`},
		{"private secret", contosoApp, ""},
		{"group-readable secret", "[[app]]\nname = \"contoso\"\ntenant = \"contoso.onmicrosoft.com\"\n" +
			"client_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret_file = \"shared.secret\"\n", ""},
		{"world-readable secret", "[[app]]\nname = \"contoso\"\ntenant = \"contoso.onmicrosoft.com\"\n" +
			"client_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret_file = \"world.secret\" #<\n",
			"app[1].client_secret_file: " + filepath.Join(dir, "world.secret") + " is readable by others (mode 0604)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, dir, tt.src)
			if tt.want == "" {
				if len(cfg.Warnings) != 0 {
					t.Fatalf("got warnings %q, want none", cfg.Warnings)
				}
				return
			}
			if len(cfg.Warnings) != 1 {
				t.Fatalf("got warnings %q, want one", cfg.Warnings)
			}
			prefix := filepath.Join(dir, "broker.toml") + ":" + strconv.Itoa(markedLine(t, tt.src)) + ": "
			if got := cfg.Warnings[0]; !strings.HasPrefix(got, prefix+tt.want) {
				t.Fatalf("got warning %q, want prefix %q", got, prefix+tt.want)
			}
		})
	}
}

func TestCloudScopes(t *testing.T) {
	c := CloudByName("global")
	if got, want := c.AppScope(), "https://outlook.office365.com/.default"; got != want {
		t.Fatalf("AppScope: got %q, want %q", got, want)
	}
	got := strings.Join(c.DelegatedScopes(), " ")
	want := "offline_access https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send"
	if got != want {
		t.Fatalf("DelegatedScopes: got %q, want %q", got, want)
	}
}

func TestDelegatedAccounts(t *testing.T) {
	dir := fixture(t)
	src := `[[app]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000001"
client_certificate_file = "rsa-cert.pem"
client_key_file = "rsa-key.pem"
[[app]]
name = "desk"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000002"
client_secret_file = "contoso.secret"
client_secret_expires = 2027-06-30
redirect_uri = "http://localhost:8400/"
cloud = "usgovhigh"
[[account]]
mailbox = "Agent@Contoso.com"
app = "contoso"
[[account]]
mailbox = "queue@contoso.com"
login_user = "AGENT@contoso.com"
app = "contoso"
[[account]]
mailbox = "presence@contoso.com"
app = "desk"
flow = "password"
scopes = ["offline_access", "https://outlook.office365.us/SMTP.Send"]
`
	cfg := mustParse(t, dir, src)
	contoso, desk := cfg.AppByName("contoso"), cfg.AppByName("desk")
	if contoso.Public() || contoso.Key == nil || contoso.Certificate == nil || contoso.ClientSecret != "" {
		t.Fatalf("contoso: got public %v, key %v, certificate %v", contoso.Public(), contoso.Key != nil, contoso.Certificate != nil)
	}
	if got := contoso.Certificate.NotAfter; !got.Equal(time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("certificate NotAfter %v", got)
	}
	if contoso.RedirectURI != DefaultRedirectURI || desk.RedirectURI != "http://localhost:8400/" {
		t.Fatalf("redirect URIs %q, %q", contoso.RedirectURI, desk.RedirectURI)
	}
	if got := desk.ClientSecretExpires; !got.Equal(time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("secret expiry %v", got)
	}
	delegated := DefaultScopes(FlowDeviceCode, contoso.Cloud)
	for i, want := range []Account{
		{Mailbox: "agent@contoso.com", Login: "agent@contoso.com", LoginUser: "agent@contoso.com", App: contoso, Flow: FlowDeviceCode, Scopes: delegated},
		{Mailbox: "queue@contoso.com", Login: "queue@contoso.com", LoginUser: "agent@contoso.com", App: contoso, Flow: FlowDeviceCode, Scopes: delegated},
		{Mailbox: "presence@contoso.com", Login: "presence@contoso.com", LoginUser: "presence@contoso.com", App: desk, Flow: FlowPassword,
			Scopes: []string{"offline_access", "https://outlook.office365.us/SMTP.Send"}},
	} {
		if got := cfg.Accounts[i]; !equalAccount(got, &want) {
			t.Fatalf("account %d: got %+v, want %+v", i, got, want)
		}
	}
	if !slices.Contains(delegated, "offline_access") || !slices.Contains(delegated, "https://outlook.office.com/IMAP.AccessAsUser.All") {
		t.Fatalf("delegated scopes %v lack offline_access or IMAP", delegated)
	}
}

func TestPublicClient(t *testing.T) {
	cfg := mustParse(t, fixture(t), `[[app]]
name = "kiosk"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000003"
[[account]]
mailbox = "kiosk@contoso.com"
app = "kiosk"
flow = "auth_code"
`)
	if !cfg.AppByName("kiosk").Public() {
		t.Fatal("an app without secret or certificate is not public")
	}
}
