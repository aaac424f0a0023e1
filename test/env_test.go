package test

import (
	"crypto/x509"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/mailbroker/broker/test/m365sim"
)

const (
	tenant   = "contoso.onmicrosoft.com"
	clientID = "3f1b6e0c-5d2a-4c8e-9b7f-2a6d1c0e9f41"
	mailbox  = "support@contoso.com"
)

// simEnv is a broker daemon in front of the simulated Microsoft 365.
type simEnv struct {
	Entra    *m365sim.Entra
	Upstream *m365sim.IMAP
	Daemon   *daemon
	Password string // an app password for mailbox
	PassID   string
	Secret   string // the app's client secret
}

// newSimEnv starts the simulated Microsoft 365 and a daemon in front of it.
// Options change the app as registered in Entra (not as configured in
// broker), to stage an administrator's mistake.
func newSimEnv(t *testing.T, appOptions ...func(*m365sim.App)) *simEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &simEnv{Entra: entra, Secret: "Zx8Q~sim.secret-value_0123456789abcdefXYZ"}
	entra.AddTenant(tenant)
	app := m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: env.Secret,
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{mailbox},
	}
	for _, o := range appOptions {
		o(&app)
	}
	entra.AddApp(app)
	env.Upstream, err = m365sim.NewIMAP(entra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Upstream.Close() })
	if err := env.Upstream.AddMailbox(mailbox); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := writeFile(t, dir, "upstream-ca.pem", env.Upstream.CACertPEM())
	secret := writeFile(t, dir, "client.secret", []byte(env.Secret+"\n"))
	cfg := brokerConfig(dir+"/state", env.Upstream.Addr(), ca, entra.URL(), tenant, clientID, secret, mailbox)
	env.Daemon = startDaemon(t, dir, cfg)
	env.PassID, env.Password = env.Daemon.addAppPassword(mailbox)
	return env
}

// dialProxy connects an imapclient to the daemon's IMAP listener.
func dialProxy(t testing.TB, addr string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// m365Unavailable is what the identity platform answers during an outage.
var m365Unavailable = m365sim.Failure{
	Status:      503,
	Error:       "temporarily_unavailable",
	Codes:       []int{50196},
	Description: "AADSTS90033: A transient error has occurred. Please try again.",
}

func certPool(t testing.TB, pemData []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatal("no certificate in PEM")
	}
	return pool
}
