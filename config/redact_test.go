package config

import (
	"bytes"
	"crypto/rsa"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretNeverPrinted(t *testing.T) {
	cfg := mustParse(t, fixture(t), contosoApp+supportAccount)
	app := cfg.Apps[0]
	if app.ClientSecret != testSecret {
		t.Fatalf("got secret %q, want the file's trimmed contents", app.ClientSecret)
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("loaded", "app", app, "cfg", cfg)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("loaded", "app", app, "cfg", cfg)
	outputs := []string{logged.String()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		for _, v := range []any{cfg, *cfg, app, *app, cfg.Accounts, []App{*app}} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
	}
	for _, out := range outputs {
		if strings.Contains(out, testSecret) || strings.Contains(out, fmt.Sprintf("%x", testSecret)) {
			t.Fatalf("secret printed in %s", out)
		}
	}
	if got := fmt.Sprintf("%+v", *app); !strings.Contains(got, "ClientSecret:[redacted]") || !strings.Contains(got, "Name:contoso") {
		t.Fatalf("got %s, want the fields with the secret redacted", got)
	}
}

// Problems with files holding the secret, or with the secret file used as
// another kind of file, must not quote its contents.
func TestSecretNotInErrors(t *testing.T) {
	src := `[imap]
listen = ["` + testSecret + `"]
tls_cert_file = "contoso.secret"
tls_key_file = "contoso.secret"
upstream_ca_file = "contoso.secret"
[[app]]
name = "contoso"
tenant = "common"
client_id = "x"
client_secret_file = "contoso.secret"
[[app]]
name = "fabrikam"
tenant = "fabrikam.com"
client_id = "00000000-0000-0000-0000-000000000002"
client_certificate_file = "contoso.secret"
client_key_file = "contoso.secret"
[[account]]
mailbox = "support@contoso.com"
app = "contoso"
flow = "device_code"
`
	_, err := parseIn(t, fixture(t), strings.Replace(src, `"`+testSecret+`"`, `"nowhere"`, 1))
	if err == nil {
		t.Fatal("got no error")
	}
	if strings.Count(err.Error(), "\n") < 5 || !strings.Contains(err.Error(), "client_certificate_file") {
		t.Fatalf("got %v, want a problem for each bad key", err)
	}
	if strings.Contains(err.Error(), testSecret) {
		t.Fatalf("secret in error: %v", err)
	}
}

func TestPrivateKeyNeverPrinted(t *testing.T) {
	cfg := mustParse(t, fixture(t), `[[app]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000001"
client_certificate_file = "rsa-cert.pem"
client_key_file = "rsa-key.pem"
`)
	app := cfg.Apps[0]
	key, ok := app.Key.(*rsa.PrivateKey)
	if !ok {
		t.Fatalf("key is %T, want *rsa.PrivateKey", app.Key)
	}
	secretPart := key.Primes[0].String()
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("loaded", "app", app, "cfg", cfg)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("loaded", "app", app, "cfg", cfg)
	outputs := []string{logged.String()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x"} {
		for _, v := range []any{cfg, *cfg, app, *app, []App{*app}} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
	}
	for _, out := range outputs {
		if strings.Contains(out, secretPart) || strings.Contains(out, key.Primes[0].Text(16)) {
			t.Fatalf("private key printed in %.200s…", out)
		}
	}
}
