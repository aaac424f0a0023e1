package test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mailbroker/broker/test/harness"
	"github.com/mailbroker/broker/test/m365sim"
)

// dovecotEnv is a broker daemon in front of a real Dovecot that validates
// the simulated identity platform's tokens.
type dovecotEnv struct {
	Entra    *m365sim.Entra
	Dovecot  *harness.Dovecot
	Daemon   *daemon
	Password string
}

func newDovecotEnv(t *testing.T) *dovecotEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	tid := entra.AddTenant(tenant)
	secret := "dovecot-env-secret"
	entra.AddApp(m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: secret,
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{mailbox},
	})
	dc := harness.StartDovecot(t, harness.DovecotOptions{
		KeyID:        entra.KeyID(),
		PublicKeyPEM: entra.PublicKeyPEM(),
		Issuers:      []string{entra.Issuer(tid)},
		Audience:     "https://outlook.office.com",
		Mailboxes:    []string{mailbox},
	})
	for i := 1; i <= 3; i++ {
		msg := fmt.Sprintf("From: customer%d@example.com\r\nTo: %s\r\nSubject: ticket %d\r\nMessage-ID: <t%d@example.com>\r\n\r\nPlease call me back.\r\n", i, mailbox, i, i)
		if err := dc.Deliver(mailbox, []byte(msg)); err != nil {
			t.Fatalf("deliver to dovecot: %v\n%s", err, dc.LogTail())
		}
	}
	dir := t.TempDir()
	secretFile := writeFile(t, dir, "client.secret", []byte(secret))
	cfg := brokerConfig(dir+"/state", dc.IMAPAddr, dc.CAFile, entra.URL(), tenant, clientID, secretFile, mailbox)
	env := &dovecotEnv{Entra: entra, Dovecot: dc, Daemon: startDaemon(t, dir, cfg)}
	_, env.Password = env.Daemon.addAppPassword(mailbox)
	return env
}

func TestDovecotUpstream(t *testing.T) {
	env := newDovecotEnv(t)
	exerciseIMAP(t, env.Daemon.IMAPAddr, mailbox, env.Password)

	out := runClient(t, "curl", "-sS", "--max-time", "30",
		"-u", mailbox+":"+env.Password,
		"imap://"+env.Daemon.IMAPAddr+"/INBOX",
		"-X", "FETCH 1:3 ENVELOPE")
	for i := 1; i <= 3; i++ {
		if want := fmt.Sprintf(`"ticket %d"`, i); !strings.Contains(out, want) {
			t.Fatalf("curl through broker to Dovecot: got\n%s\nwant %q", out, want)
		}
	}
	out = runClient(t, "python3", "-c", imaplibScript, env.Daemon.IMAPAddr, mailbox, env.Password)
	if !strings.Contains(out, "refused") {
		t.Fatalf("imaplib against Dovecot: got %q", out)
	}
}
