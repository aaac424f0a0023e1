package test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mailbroker/broker/test/m365sim"
)

// TestPOP3SimulatedExchange logs in through broker to the simulated
// Exchange Online POP3 (the response after "+", the error challenge of a
// refusal), then stages an administrator's mistake and an outage.
func TestPOP3SimulatedExchange(t *testing.T) {
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	secret := "pop3-sim-secret"
	entra.AddTenant(tenant)
	entra.AddApp(m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: secret,
		Roles: []string{"IMAP.AccessAsApp", "POP.AccessAsApp"}, Mailboxes: []string{mailbox},
	})
	imapSim, err := m365sim.NewIMAP(entra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { imapSim.Close() })
	if err := imapSim.AddMailbox(mailbox); err != nil {
		t.Fatal(err)
	}
	popSim, err := m365sim.NewPOP3(entra, imapSim, m365sim.POP3Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { popSim.Close() })
	dir := t.TempDir()
	ca := writeFile(t, dir, "imap-ca.pem", imapSim.CACertPEM())
	popCA := writeFile(t, dir, "pop-ca.pem", popSim.CACertPEM())
	secretFile := writeFile(t, dir, "client.secret", []byte(secret))
	cfg := brokerConfig(dir+"/state", imapSim.Addr(), ca, entra.URL(), tenant, clientID, secretFile, mailbox) +
		fmt.Sprintf("\n[pop3]\nlisten = [\"127.0.0.1:0\"]\nupstream = %q\nupstream_ca_file = %q\n", popSim.Addr(), popCA)
	d := startDaemon(t, dir, cfg)
	m := pop3ListeningRE.FindStringSubmatch(d.Log())
	if m == nil {
		t.Fatalf("no POP3 listener\n%s", d.Log())
	}
	env := &pop3Env{Daemon: d, Addr: m[1]}
	_, env.Password = d.addAppPassword(mailbox)

	// CAPA before login: Exchange's TOP and UIDL, learnt by the probe.
	d.waitLog(`msg="upstream reachable" proto=pop3`)
	p := env.dial(t)
	if r := p.cmd("CAPA"); r != "+OK Capability list follows" {
		t.Fatalf("CAPA: %q", r)
	}
	var caps []string
	for l := p.line(); l != "."; l = p.line() {
		caps = append(caps, l)
	}
	if got := strings.Join(caps, ","); !strings.HasPrefix(got, "TOP,UIDL,RESP-CODES,AUTH-RESP-CODE,USER,SASL PLAIN LOGIN") {
		t.Fatalf("CAPA: %q", got)
	}

	p = env.login(t)
	if body := p.multi("RETR 1"); !strings.Contains(string(body), "Subject: ") {
		t.Fatalf("RETR: %q", body)
	}
	p.cmd("QUIT")

	// POP3 disabled for the mailbox: Exchange refuses after its error
	// challenge; the client gets [AUTH], the log the fix.
	popSim.SetPOPEnabled(mailbox, false)
	p = env.dial(t)
	p.cmd("USER " + mailbox)
	if r := p.cmd("PASS " + env.Password); !strings.HasPrefix(r, "-ERR [AUTH] Mailbox login refused") {
		t.Fatalf("POP disabled: %q", r)
	}
	line := d.waitLog(`msg="upstream login failed" proto=pop3`)
	for _, want := range []string{"Set-CASMailbox -Identity <mailbox> -PopEnabled $true", "POP.AccessAsApp", "challenge"} {
		if !strings.Contains(line, want) {
			t.Fatalf("log line lacks %q: %s", want, line)
		}
	}
	popSim.SetPOPEnabled(mailbox, true)

	// Upstream down: a temporary failure.
	popSim.Close()
	p = env.dial(t)
	p.cmd("USER " + mailbox)
	if r := p.cmd("PASS " + env.Password); !strings.HasPrefix(r, "-ERR [SYS/TEMP] ") {
		t.Fatalf("upstream down: %q", r)
	}
	checkNoSecrets(t, env)
}
