package config

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string // the line that should be reported ends in "#<"
		key  string
		msg  string
	}{
		{"syntax", "state_dir = #<\n", "", "expected value"},
		{"duplicate key", "state_dir = \"/a\"\nstate_dir = \"/b\" #<\n", "", "already been defined"},
		{"unknown top-level key", "colour = 1 #<\n", "colour", "unknown key"},
		{"unknown key in second account", contosoApp + supportAccount +
			"[[account]]\nmailbox = \"b@contoso.com\"\ncolour = 1 #<\napp = \"contoso\"\nflow = \"client_credentials\"\n",
			"account[2].colour", "unknown key"},
		{"unknown table", "[nntp] #<\nlisten = [\"127.0.0.1:119\"]\n", "nntp", "unknown key"},
		{"upper-case key", "State_Dir = \"/x\" #<\n", "State_Dir", "keys are lower case: state_dir"},
		{"string of wrong type", "state_dir = 5 #<\n", "state_dir", "must be a string, not integer"},
		{"empty string", "state_dir = \"\" #<\n", "state_dir", "must not be empty"},
		{"array of wrong type", "[imap]\nlisten = \"127.0.0.1:143\" #<\n", "imap.listen", "must be an array of strings, not string"},
		{"array of integers", "[imap]\nlisten = [143] #<\n", "imap.listen", "array containing integer"},
		{"table of wrong type", "imap = 5 #<\n", "imap", "expected table but found int64"},

		{"listen without port", "[imap]\nlisten = [\"127.0.0.1\"] #<\n", "imap.listen[1]", "missing port"},
		{"listen with port name", "[imap]\nlisten = [\n  \"127.0.0.1:143\",\n  \"127.0.0.1:imap\", #<\n]\n",
			"imap.listen[2]", `port "imap" is not a port number`},
		{"duplicate listen", "[imap]\nlisten = [\"127.0.0.1:143\", \"127.0.0.1:143\"] #<\n",
			"imap.listen[2]", "already listed as imap.listen[1]"},
		{"duplicate across listen and listen_tls",
			"[imap]\nlisten = [\"127.0.0.1:1993\"]\nlisten_tls = [\"127.0.0.1:1993\"] #<\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"key.pem\"\n",
			"imap.listen_tls[1]", "already listed as imap.listen[1]"},
		{"no listener", "[imap] #<\nlisten = []\n", "imap", "no listener"},
		{"listen_tls without certificate", "[imap]\nlisten_tls = [\"127.0.0.1:993\"] #<\n",
			"imap.listen_tls", "requires imap.tls_cert_file and imap.tls_key_file"},
		{"certificate without key", "[imap] #<\ntls_cert_file = \"cert.pem\"\n",
			"imap.tls_key_file", "required when imap.tls_cert_file is set"},
		{"key without certificate", "[imap] #<\ntls_key_file = \"key.pem\"\n",
			"imap.tls_cert_file", "required when imap.tls_key_file is set"},
		{"missing certificate", "[imap]\ntls_cert_file = \"nope.pem\" #<\ntls_key_file = \"key.pem\"\n",
			"imap.tls_cert_file", "no such file"},
		{"mismatched key", "[imap]\nlisten_tls = [\":993\"]\ntls_cert_file = \"cert.pem\" #<\ntls_key_file = \"other-key.pem\"\n",
			"imap.tls_cert_file", "does not match"},
		{"missing CA file", "[imap]\nupstream_ca_file = \"nope.pem\" #<\n", "imap.upstream_ca_file", "no such file"},
		{"CA file without certificate", "[imap]\nupstream_ca_file = \"key.pem\" #<\n",
			"imap.upstream_ca_file", "holds no PEM certificate"},
		{"CA file is a directory", "[imap]\nupstream_ca_file = \".\" #<\n", "imap.upstream_ca_file", "not a regular file"},
		{"upstream without port", "[imap]\nupstream = \"outlook.office365.com\" #<\n", "imap.upstream", "missing port"},
		{"upstream without host", "[imap]\nupstream = \":993\" #<\n", "imap.upstream", "has no host"},
		{"apps in different clouds", "[imap] #<\n" + contosoApp + "[[app]]\nname = \"cn\"\ntenant = \"cn.partner.onmschina.cn\"\n" +
			"client_id = \"00000000-0000-0000-0000-000000000002\"\ncloud = \"china\"\n",
			"imap.upstream", "apps use different clouds (global, china): set imap.upstream"},

		{"unknown smtp key", "[smtp]\nmax_connections = 3 #<\n", "smtp.max_connections", "unknown key"},
		{"smtp listen without port", "[smtp]\nlisten = [\"127.0.0.1\"] #<\n", "smtp.listen[1]", "missing port"},
		{"smtp listen_tls without certificate", "[smtp]\nlisten_tls = [\"127.0.0.1:465\"] #<\n",
			"smtp.listen_tls", "requires smtp.tls_cert_file and smtp.tls_key_file"},
		{"smtp certificate without key", "[smtp] #<\ntls_cert_file = \"cert.pem\"\n",
			"smtp.tls_key_file", "required when smtp.tls_cert_file is set"},
		{"smtp upstream without port", "[smtp]\nupstream = \"smtp.office365.com\" #<\n", "smtp.upstream", "missing port"},
		{"smtp missing CA file", "[smtp]\nupstream_ca_file = \"nope.pem\" #<\n", "smtp.upstream_ca_file", "no such file"},
		{"smtp no listener", "[smtp] #<\nlisten = []\n", "smtp", "no listener: set smtp.listen or smtp.listen_tls"},
		{"smtp apps in different clouds", "[smtp] #<\n" + contosoApp + "[[app]]\nname = \"cn\"\ntenant = \"cn.partner.onmschina.cn\"\n" +
			"client_id = \"00000000-0000-0000-0000-000000000002\"\ncloud = \"china\"\n",
			"smtp.upstream", "apps use different clouds (global, china): set smtp.upstream"},
		{"listen in imap and smtp", "[imap]\nlisten = [\"127.0.0.1:2525\"]\n[smtp]\nlisten = [\"127.0.0.1:2525\"] #<\n",
			"smtp.listen[1]", "already listed as imap.listen[1]"},
		{"unauthenticated as unknown account", contosoApp + supportAccount + "[smtp]\nallow_unauthenticated_as = \"scanner@contoso.com\" #<\n",
			"smtp.allow_unauthenticated_as", `no [[account]] has the mailbox or login "scanner@contoso.com"`},
		{"unauthenticated as without accounts", "[smtp]\nallow_unauthenticated_as = \"scanner\" #<\n",
			"smtp.allow_unauthenticated_as", "no [[account]]"},
		{"unauthenticated as empty", "[smtp]\nallow_unauthenticated_as = \"\" #<\n", "smtp.allow_unauthenticated_as", "must not be empty"},
		{"unauthenticated as wrong type", "[smtp]\nallow_unauthenticated_as = true #<\n", "smtp.allow_unauthenticated_as", "must be a string, not boolean"},
		{"max connections zero", "[smtp]\nmax_connections_per_mailbox = 0 #<\n", "smtp.max_connections_per_mailbox", "0 is out of range: 1 to 100"},
		{"max connections too many", "[smtp]\nmax_connections_per_mailbox = 101 #<\n", "smtp.max_connections_per_mailbox", "101 is out of range"},
		{"max connections negative", "[smtp]\nmax_connections_per_mailbox = -3 #<\n", "smtp.max_connections_per_mailbox", "-3 is out of range"},
		{"max connections string", "[smtp]\nmax_connections_per_mailbox = \"3\" #<\n", "smtp.max_connections_per_mailbox", "must be an integer, not string"},
		{"max connections float", "[smtp]\nmax_connections_per_mailbox = 3.0 #<\n", "smtp.max_connections_per_mailbox", "must be an integer, not float"},
		{"warm connections negative", "[imap]\nwarm_connections = -1 #<\n", "imap.warm_connections", "-1 is out of range: 0 (none) to 16"},
		{"warm connections too many", "[pop3]\nwarm_connections = 17 #<\n", "pop3.warm_connections", "17 is out of range"},
		{"connection wait integer", "[smtp]\nconnection_wait = 30 #<\n", "smtp.connection_wait", `must be a duration such as "30s", not integer`},
		{"connection wait without unit", "[smtp]\nconnection_wait = \"30\" #<\n", "smtp.connection_wait", `"30" is not a duration`},
		{"connection wait zero", "[smtp]\nconnection_wait = \"0s\" #<\n", "smtp.connection_wait", "0s is out of range"},
		{"connection wait negative", "[smtp]\nconnection_wait = \"-1s\" #<\n", "smtp.connection_wait", "-1s is out of range"},
		{"connection wait too long", "[smtp]\nconnection_wait = \"10m1s\" #<\n", "smtp.connection_wait", "10m1s is out of range: more than 0s and at most 10m0s"},
		{"connection wait empty", "[smtp]\nconnection_wait = \"\" #<\n", "smtp.connection_wait", `"" is not a duration`},
		{"reuse idle timeout negative", "[smtp]\nreuse_idle_timeout = \"-1s\" #<\n", "smtp.reuse_idle_timeout", "-1s is out of range: 0s (no reuse) to 5m0s"},
		{"reuse idle timeout too long", "[smtp]\nreuse_idle_timeout = \"6m\" #<\n", "smtp.reuse_idle_timeout", "6m0s is out of range"},
		{"reuse idle timeout integer", "[smtp]\nreuse_idle_timeout = 30 #<\n", "smtp.reuse_idle_timeout", `must be a duration such as "30s", not integer`},
		{"imap max connections zero", "[imap]\nmax_connections_per_mailbox = 0 #<\n", "imap.max_connections_per_mailbox", "0 is out of range: 1 to 100 (Exchange Online allows 20)"},
		{"imap max connections string", "[imap]\nmax_connections_per_mailbox = \"20\" #<\n", "imap.max_connections_per_mailbox", "must be an integer, not string"},
		{"imap connection wait too long", "[imap]\nconnection_wait = \"11m\" #<\n", "imap.connection_wait", "11m0s is out of range: more than 0s and at most 10m0s"},
		{"imap connection wait integer", "[imap]\nconnection_wait = 30 #<\n", "imap.connection_wait", `must be a duration such as "30s", not integer`},
		{"max connections zero", "[limits]\nmax_connections = 0 #<\n", "limits.max_connections", "0 is out of range: 1 to 100000"},
		{"max connections float", "[limits]\nmax_connections = 1e3 #<\n", "limits.max_connections", "must be an integer, not float"},
		{"per source too many", "[limits]\nmax_connections_per_source = 100001 #<\n", "limits.max_connections_per_source", "100001 is out of range"},
		{"per source above total", "[limits]\nmax_connections = 10\nmax_connections_per_source = 11 #<\n", "limits.max_connections_per_source", "11 is more than limits.max_connections (10)"},
		{"pre-auth too short", "[limits]\npre_auth_timeout = \"500ms\" #<\n", "limits.pre_auth_timeout", "500ms is out of range: 1s to 10m0s"},
		{"pre-auth too long", "[limits]\npre_auth_timeout = \"1h\" #<\n", "limits.pre_auth_timeout", "1h0m0s is out of range"},
		{"pre-auth integer", "[limits]\npre_auth_timeout = 60 #<\n", "limits.pre_auth_timeout", `must be a duration such as "30s", not integer`},
		{"drain too short", "[limits]\ndrain_timeout = \"10ms\" #<\n", "limits.drain_timeout", "10ms is out of range: 1s to 1h0m0s"},
		{"limits unknown key", "[limits]\nmax_sessions = 3 #<\n", "limits.max_sessions", "unknown key"},
		{"limits wrong type", "limits = 3 #<\n", "limits", ""},

		{"app without name", "[[app]] #<\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"00000000-0000-0000-0000-000000000001\"\n",
			"app[1].name", "required"},
		{"app name with space", "[[app]]\nname = \"con toso\" #<\n", "app[1].name", "white space"},
		{"duplicate app name", contosoApp + "[[app]]\nname = \"contoso\" #<\n", "app[2].name", `"contoso" is already the name of app[1]`},
		{"tenant missing", "[[app]] #<\nname = \"a\"\n", "app[1].tenant", "required"},
		{"tenant common", "[[app]]\ntenant = \"common\" #<\n", "app[1].tenant", "broker signs in to one directory"},
		{"tenant organizations", "[[app]]\ntenant = \"Organizations\" #<\n", "app[1].tenant", `"organizations" is not a tenant`},
		{"tenant consumers", "[[app]]\ntenant = \"consumers\" #<\n", "app[1].tenant", `"consumers" is not a tenant`},
		{"tenant without dot", "[[app]]\ntenant = \"contoso\" #<\n", "app[1].tenant", "neither a domain nor a tenant id"},
		{"client_id missing", "[[app]] #<\nname = \"a\"\n", "app[1].client_id", "required"},
		{"client_id not a GUID", "[[app]]\nclient_id = \"contoso-app\" #<\n", "app[1].client_id", "is not a GUID"},
		{"secret file missing", "[[app]]\nclient_secret_file = \"nope.secret\" #<\n", "app[1].client_secret_file", "no such file"},
		{"secret file empty", "[[app]]\nclient_secret_file = \"empty.secret\" #<\n", "app[1].client_secret_file", "is empty"},
		{"secret needed by client credentials", "[[app]] #<\nname = \"contoso\"\ntenant = \"contoso.onmicrosoft.com\"\n" +
			"client_id = \"00000000-0000-0000-0000-000000000001\"\n" + supportAccount,
			"app[1].client_secret_file", "required (or client_certificate_file): account[1] (support@contoso.com) uses flow client_credentials"},
		{"secret and certificate", "[[app]]\nclient_secret_file = \"contoso.secret\"\nclient_certificate_file = \"cert.pem\" #<\nclient_key_file = \"key.pem\"\n",
			"app[1].client_certificate_file", "choose one credential"},
		{"certificate without key", "[[app]]\nclient_certificate_file = \"cert.pem\"\nclient_key_file = \"\" #<\n", "app[1].client_key_file", "must not be empty"},
		{"key without certificate", "[[app]] #<\nclient_key_file = \"key.pem\"\n", "app[1].client_certificate_file", "required with client_key_file"},
		{"certificate not an RSA key", "[[app]]\nclient_certificate_file = \"cert.pem\" #<\nclient_key_file = \"key.pem\"\n", "app[1].client_certificate_file", "not an RSA key"},
		{"certificate and wrong key", "[[app]]\nclient_certificate_file = \"rsa-cert.pem\" #<\nclient_key_file = \"other-key.pem\"\n", "app[1].client_certificate_file", "do not form a pair"},
		{"secret expiry not a date", "[[app]]\nclient_secret_file = \"contoso.secret\"\nclient_secret_expires = \"June 2027\" #<\n", "app[1].client_secret_expires", `"June 2027" is not a date`},
		{"secret expiry without secret", "[[app]]\nclient_secret_expires = 2027-06-30 #<\n", "app[1].client_secret_expires", "set without client_secret_file"},
		{"redirect URI on 127.0.0.1", "[[app]]\nredirect_uri = \"http://127.0.0.1:8400\" #<\n", "app[1].redirect_uri", "only through the app manifest"},
		{"redirect URI over http", "[[app]]\nredirect_uri = \"http://broker.contoso.com/cb\" #<\n", "app[1].redirect_uri", "http only for localhost"},
		{"unknown cloud", "[[app]]\ncloud = \"mars\" #<\n", "app[1].cloud", `unknown cloud "mars" (known: global, usgovhigh, usgovdod, china)`},
		{"authority over http", "[[app]]\nauthority = \"http://login.example.com\" #<\n", "app[1].authority", "must use https"},
		{"authority with path", "[[app]]\nauthority = \"https://login.example.com/contoso\" #<\n", "app[1].authority", "scheme and host only"},
		{"authority with query", "[[app]]\nauthority = \"https://login.example.com?x=1\" #<\n", "app[1].authority", "scheme and host only"},
		{"authority not a URL", "[[app]]\nauthority = \"login.example.com\" #<\n", "app[1].authority", "is not a URL"},

		{"mailbox missing", "[[account]] #<\napp = \"contoso\"\n", "account[1].mailbox", "required"},
		{"mailbox not an address", "[[account]]\nmailbox = \"support\" #<\n", "account[1].mailbox", "not an address"},
		{"mailbox with display name", "[[account]]\nmailbox = \"Support <support@contoso.com>\" #<\n", "account[1].mailbox", "not an address"},
		{"duplicate mailbox", contosoApp + supportAccount + "[[account]]\nmailbox = \"SUPPORT@contoso.com\" #<\n",
			"account[2].mailbox", `"support@contoso.com" is already the mailbox of account[1]`},
		{"mailbox is an earlier login", contosoApp + "[[account]]\nmailbox = \"a@contoso.com\"\nlogin = \"b@contoso.com\"\n" +
			"[[account]]\nmailbox = \"b@contoso.com\" #<\n",
			"account[2].mailbox", `"b@contoso.com" is already the login of account[1]`},
		{"login is another mailbox", contosoApp + supportAccount + "[[account]]\nmailbox = \"b@contoso.com\"\nlogin = \"Support@Contoso.com\" #<\n",
			"account[2].login", `"support@contoso.com" is already the mailbox of account[1]`},
		{"duplicate login", contosoApp + "[[account]]\nmailbox = \"a@contoso.com\"\nlogin = \"desk\"\n" +
			"[[account]]\nmailbox = \"b@contoso.com\"\nlogin = \"DESK\" #<\n",
			"account[2].login", `"desk" is already the login of account[1]`},
		{"login with space", "[[account]]\nlogin = \"front desk\" #<\n", "account[1].login", "white space"},
		{"account app missing", "[[account]] #<\nmailbox = \"a@contoso.com\"\n", "account[1].app", "required"},
		{"account app unknown", contosoApp + supportAccount + "[[account]]\nmailbox = \"b@contoso.com\"\napp = \"fabrikam\" #<\n",
			"account[2].app", `no [[app]] named "fabrikam"`},
		{"flow unknown", "[[account]]\nflow = \"magic\" #<\n", "account[1].flow", `unknown flow "magic"`},
		{"login_user with client credentials", contosoApp + "[[account]]\nmailbox = \"a@contoso.com\"\napp = \"contoso\"\nflow = \"client_credentials\"\nlogin_user = \"b@contoso.com\" #<\n",
			"account[1].login_user", "no user signs in with flow client_credentials"},
		{"login_user not an address", "[[account]]\nlogin_user = \"agent\" #<\n", "account[1].login_user", "not an address"},
		{"scopes empty", "[[account]]\nscopes = [] #<\n", "account[1].scopes", "must not be empty"},
		{"scopes of client credentials", contosoApp + "[[account]]\nmailbox = \"a@contoso.com\"\napp = \"contoso\"\nflow = \"client_credentials\"\nscopes = [\"https://outlook.office.com/IMAP.AccessAsUser.All\"] #<\n",
			"account[1].scopes", `takes a single "<resource>/.default" scope`},
		{"shared sign-in with two flows", contosoApp + "[[account]]\nmailbox = \"a@contoso.com\"\napp = \"contoso\"\n" +
			"[[account]]\nmailbox = \"shared@contoso.com\"\nlogin_user = \"a@contoso.com\"\napp = \"contoso\"\nflow = \"password\" #<\n",
			"account[2].flow", "accounts sharing a sign-in share its flow"},
		{"shared sign-in with two scope lists", contosoApp + "[[account]]\nmailbox = \"a@contoso.com\"\napp = \"contoso\"\n" +
			"[[account]]\nmailbox = \"shared@contoso.com\"\nlogin_user = \"a@contoso.com\"\napp = \"contoso\"\nscopes = [\"offline_access\"] #<\n",
			"account[2].scopes", "accounts sharing a sign-in share its scopes"},
		{"inline table account", "account = [\n  {mailbox = \"a@contoso.com\", app = \"contoso\", flow = \"client_credentials\"},\n" +
			"  {mailbox = \"b@contoso.com\", app = \"nope\", flow = \"client_credentials\"}, #<\n]\n" + contosoApp,
			"account[2].app", `no [[app]] named "nope"`},
	}
	dir := fixture(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseIn(t, dir, tt.src)
			if err == nil {
				t.Fatalf("got no error, want %s: %s", tt.key, tt.msg)
			}
			where := fmt.Sprintf("broker.toml:%d: ", markedLine(t, tt.src))
			if markedLine(t, tt.src) == 0 {
				where = "broker.toml: "
			}
			if tt.key != "" {
				where += tt.key + ": "
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.Contains(line, where) && strings.Contains(line, tt.msg) {
					return
				}
			}
			t.Fatalf("got %q, want a line containing %q and %q", err, where, tt.msg)
		})
	}
}

func TestParseReportsEveryProblemInLineOrder(t *testing.T) {
	src := `state_dir = 1
[[account]]
mailbox = "a@contoso.com"
app = "nope"
flow = "magic"
[imap]
listen = ["nowhere"]
`
	_, err := parseIn(t, t.TempDir(), src)
	if err == nil {
		t.Fatal("got no error")
	}
	var got []string
	for _, line := range strings.Split(err.Error(), "\n") {
		_, after, _ := strings.Cut(line, "broker.toml:")
		key, _, _ := strings.Cut(after, ": ")
		got = append(got, key)
	}
	want := []string{"1", "4", "5", "7"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got lines %v, want %v in\n%v", got, want, err)
	}
}

func TestUnknownTableReportedOnce(t *testing.T) {
	_, err := parseIn(t, t.TempDir(), "[nntp]\nlisten = [\"a:1\"]\nupstream = \"b:2\"\n")
	if err == nil {
		t.Fatal("got no error")
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 1 {
		t.Fatalf("got %d problems, want 1: %v", n, err)
	}
}
