package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPOP3Defaults(t *testing.T) {
	cfg := mustParse(t, t.TempDir(), "[pop3]\n")
	p := cfg.POP3
	if p == nil {
		t.Fatal("got no POP3 for [pop3]")
	}
	if !slices.Equal(p.Listen, []string{"127.0.0.1:110"}) || len(p.ListenTLS) != 0 || p.Upstream != "outlook.office365.com:995" ||
		p.MaxConnectionsPerMailbox != 16 || p.ConnectionWait != 30*time.Second {
		t.Fatalf("got %+v, want the defaults", p)
	}
	if cfg := mustParse(t, t.TempDir(), "[imap]\n"); cfg.POP3 != nil {
		t.Fatalf("got POP3 %+v without [pop3]", cfg.POP3)
	}
}

func TestPOP3Settings(t *testing.T) {
	dir := fixture(t)
	src := `[pop3]
listen = ["127.0.0.1:1110"]
listen_tls = ["127.0.0.1:1995"]
tls_cert_file = "cert.pem"
tls_key_file = "key.pem"
max_connections_per_mailbox = 2
connection_wait = "5s"
[[app]]
name = "gov"
tenant = "contoso.onmicrosoft.us"
client_id = "00000000-0000-0000-0000-000000000001"
cloud = "usgovhigh"
`
	cfg := mustParse(t, dir, src)
	p := cfg.POP3
	if p.Upstream != "outlook.office365.us:995" || p.MaxConnectionsPerMailbox != 2 || p.ConnectionWait != 5*time.Second ||
		!slices.Equal(p.ListenTLS, []string{"127.0.0.1:1995"}) || p.TLSCertFile == "" {
		t.Fatalf("got %+v", p)
	}
}

func TestPOP3Errors(t *testing.T) {
	for src, want := range map[string]string{
		"[pop3]\nmax_connections_per_mailbox = 0\n":                                "pop3.max_connections_per_mailbox: 0 is out of range",
		"[pop3]\nlisten_tls = [\"127.0.0.1:995\"]\n":                               "pop3.listen_tls: requires pop3.tls_cert_file",
		"[pop3]\nupstream = \"outlook.office365.com\"\n":                           "pop3.upstream",
		"[pop3]\npop_port = 1\n":                                                   "pop3.pop_port: unknown key",
		"[imap]\nlisten = [\"127.0.0.1:1\"]\n[pop3]\nlisten = [\"127.0.0.1:1\"]\n": "already listed as imap.listen[1]",
	} {
		_, err := parseIn(t, t.TempDir(), src)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", src, err, want)
		}
	}
}

func TestPOP3Scopes(t *testing.T) {
	for _, c := range clouds {
		if c.POPHost == "" || !strings.HasSuffix(c.POPHost, ":995") || strings.TrimSuffix(c.POPHost, ":995") != strings.TrimSuffix(c.IMAPHost, ":993") {
			t.Errorf("cloud %s: POPHost %q, IMAPHost %q", c.Name, c.POPHost, c.IMAPHost)
		}
	}
	src := contosoApp + supportAccount + `[[account]]
mailbox = "agent@contoso.com"
app = "contoso"
[[account]]
mailbox = "queue@contoso.com"
login_user = "agent@contoso.com"
app = "contoso"
[[account]]
mailbox = "own@contoso.com"
app = "contoso"
scopes = ["offline_access", "https://outlook.office.com/IMAP.AccessAsUser.All"]
`
	global := CloudByName("global")
	for _, pop3 := range []bool{false, true} {
		text := src
		if pop3 {
			text = "[pop3]\n" + src
		}
		cfg := mustParse(t, fixture(t), text)
		want := global.DelegatedScopes()
		if pop3 {
			want = append(want, "https://outlook.office.com/POP.AccessAsUser.All")
		}
		for _, a := range cfg.Accounts {
			switch a.Mailbox {
			case "support@contoso.com":
				if !slices.Equal(a.Scopes, []string{global.AppScope()}) {
					t.Errorf("pop3 %v: app-only scopes %q", pop3, a.Scopes)
				}
			case "own@contoso.com":
				if len(a.Scopes) != 2 {
					t.Errorf("pop3 %v: explicit scopes changed: %q", pop3, a.Scopes)
				}
			default:
				if !slices.Equal(a.Scopes, want) {
					t.Errorf("pop3 %v: %s scopes %q, want %q", pop3, a.Mailbox, a.Scopes, want)
				}
			}
		}
	}
}
