package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const testSecret = "s3cr3t-value-that-must-not-leak"

// fixture is a directory holding a configuration's neighbour files:
// contoso.secret (mode 0600), empty.secret, cert.pem, key.pem,
// other-key.pem (not matching cert.pem) and ca.pem.
func fixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, dir, "contoso.secret", "\n  "+testSecret+"\n", 0o600)
	writeFile(t, dir, "empty.secret", " \n\t\n", 0o600)
	cert, key := selfSigned(t)
	_, otherKey := selfSigned(t)
	writeFile(t, dir, "cert.pem", cert, 0o644)
	writeFile(t, dir, "key.pem", key, 0o600)
	writeFile(t, dir, "other-key.pem", otherKey, 0o600)
	writeFile(t, dir, "ca.pem", cert, 0o644)
	rsaCert, rsaKey := selfSignedRSA(t)
	writeFile(t, dir, "rsa-cert.pem", rsaCert, 0o644)
	writeFile(t, dir, "rsa-key.pem", rsaKey, 0o600)
	return dir
}

// selfSignedRSA is a client certificate as Entra takes them: RSA.
func selfSignedRSA(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "broker"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

// equalAccount compares accounts field by field; App by identity.
func equalAccount(a, b *Account) bool {
	return a.Mailbox == b.Mailbox && a.Login == b.Login && a.LoginUser == b.LoginUser &&
		a.App == b.App && a.Flow == b.Flow && slices.Equal(a.Scopes, b.Scopes)
}

func writeFile(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is subject to the umask; the tests need it exact.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func selfSigned(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return certPEM, keyPEM
}

// parseIn parses src as the file broker.toml in dir.
func parseIn(t *testing.T, dir, src string) (*Config, error) {
	t.Helper()
	return Parse([]byte(src), filepath.Join(dir, "broker.toml"))
}

func mustParse(t *testing.T, dir, src string) *Config {
	t.Helper()
	cfg, err := parseIn(t, dir, src)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}

// markedLine returns the number of the line of src that ends in "#<", or 0.
func markedLine(t *testing.T, src string) int {
	t.Helper()
	for i, l := range strings.Split(src, "\n") {
		if strings.HasSuffix(l, "#<") {
			return i + 1
		}
	}
	return 0
}

const contosoApp = `[[app]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000001"
client_secret_file = "contoso.secret"
`

const supportAccount = `[[account]]
mailbox = "support@contoso.com"
app = "contoso"
flow = "client_credentials"
`
