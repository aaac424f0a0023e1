package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/test/m365sim"
)

// The -dev tenant. The client IDs are any GUIDs; nothing leaves the
// machine. support@ is served app-only; agent@ is a user who signs in with
// broker login through a public client app (device code).
const (
	devTenant         = "contoso.onmicrosoft.com"
	devClientID       = "00000000-0000-4000-8000-00000000d3e0"
	devMailbox        = "support@contoso.com"
	devPublicClientID = "00000000-0000-4000-8000-00000000d3e1"
	devAgent          = "agent@contoso.com"
)

const devConfig = `# Written by broker serve -dev.
state_dir = %q

[imap]
listen = [%q]
upstream = %q
upstream_ca_file = %q

[smtp]
listen = [%q]
upstream = %q
upstream_ca_file = %q

[[app]]
name = "contoso"
tenant = %q
client_id = %q
client_secret_file = %q
authority = %q

[[account]]
mailbox = %q
app = "contoso"
flow = "client_credentials"

[[app]]
name = "contoso-public"
tenant = %q
client_id = %q
authority = %q

[[account]]
mailbox = %q
app = "contoso-public"
flow = "device_code"
`

// serveDev runs the real daemon against an in-process simulated Microsoft
// 365, with a temporary state directory, a configuration written the same
// way an administrator would, and one demo mailbox with an app password.
func serveDev(ctx context.Context, imapListen, smtpListen, pop3Listen string, stdout io.Writer, log *slog.Logger) error {
	dir, err := os.MkdirTemp("", "broker-dev-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		return err
	}
	defer entra.Close()
	secret := rand32()
	entra.AddTenant(devTenant)
	entra.AddApp(m365sim.App{
		Tenant:    devTenant,
		ClientID:  devClientID,
		Secret:    secret,
		Roles:     append([]string{"IMAP.AccessAsApp", "SMTP.SendAsApp", "POP.AccessAsApp"}, devGraphRoles...),
		Mailboxes: []string{devMailbox, devGraphMailbox},
	})
	agentPassword := rand.Text()[:16]
	entra.AddUser(devTenant, devAgent, agentPassword)
	entra.AddApp(m365sim.App{
		Tenant:            devTenant,
		ClientID:          devPublicClientID,
		PublicClientFlows: true,
		RedirectURIs:      []string{"http://localhost"},
	})
	upstream, err := m365sim.NewIMAP(entra)
	if err != nil {
		return err
	}
	defer upstream.Close()
	for _, mailbox := range []string{devMailbox, devAgent} {
		if err := upstream.AddMailbox(mailbox); err != nil {
			return err
		}
	}
	// Messages sent through the proxy arrive in the simulated inbox.
	smtpUpstream, err := m365sim.NewSMTP(entra, m365sim.SMTPOptions{IMAP: upstream})
	if err != nil {
		return err
	}
	defer smtpUpstream.Close()
	// POP3 over the same mailboxes.
	pop3Section, stopPOP3, err := startDevPOP3(entra, upstream, dir, pop3Listen, log)
	if err != nil {
		return err
	}
	defer stopPOP3()
	// Microsoft Graph for the account that sends through it.
	graphKeys, graphAccount, stopGraph, err := startDevGraph(entra, upstream, dir)
	if err != nil {
		return err
	}
	defer stopGraph()

	imapListen = devListenAddr(imapListen, "imap", log)
	smtpListen = devListenAddr(smtpListen, "smtp", log)
	files := map[string][]byte{
		"client.secret":        []byte(secret + "\n"),
		"upstream-ca.pem":      upstream.CACertPEM(),
		"smtp-upstream-ca.pem": smtpUpstream.CACertPEM(),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	cfgPath := filepath.Join(dir, "broker.toml")
	cfgText := fmt.Sprintf(devConfig, filepath.Join(dir, "state"),
		imapListen, upstream.Addr(), filepath.Join(dir, "upstream-ca.pem"),
		smtpListen, smtpUpstream.Addr(), filepath.Join(dir, "smtp-upstream-ca.pem"),
		devTenant, devClientID,
		filepath.Join(dir, "client.secret"), entra.URL(), devMailbox,
		devTenant, devPublicClientID, entra.URL(), devAgent)
	cfgText += pop3Section
	cfgText = withDevGraph(cfgText, graphKeys, graphAccount)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	d, err := newDaemon(cfg, log, broker.Options{})
	if err != nil {
		return err
	}
	_, password, err := d.broker.AddAppPassword(ctx, devMailbox, "dev")
	if err != nil {
		d.close()
		return err
	}
	_, agentAppPassword, err := d.broker.AddAppPassword(ctx, devAgent, "dev")
	if err != nil {
		d.close()
		return err
	}
	addrs := map[string]string{}
	for _, sl := range d.listeners {
		if addrs[sl.proto] == "" {
			addrs[sl.proto] = sl.l.Addr().String()
		}
	}
	imapAddr, smtpAddr := addrs["imap"], addrs["smtp"]
	fmt.Fprintf(stdout, `
broker is running against a simulated Microsoft 365; nothing leaves this machine.

  IMAP proxy     %[1]s  (LOGIN or AUTHENTICATE PLAIN, plain text on loopback)
  SMTP proxy     %[2]s  (AUTH PLAIN or LOGIN, plain text on loopback)
  POP3 proxy     %[10]s  (USER and PASS, or AUTH PLAIN or LOGIN, plain text on loopback)
  mailbox        %[3]s
  app password   %[4]s
  config         %[5]s

List the inbox through the proxy:

  curl -s -u '%[3]s:%[4]s' 'imap://%[1]s/INBOX' -X 'FETCH 1:* (FLAGS ENVELOPE)'

Send a message through the proxy; it arrives in the inbox above:

  printf 'From: %[3]s\r\nTo: %[3]s\r\nSubject: Hello through broker\r\n\r\nIt works.\r\n' | curl -s -u '%[3]s:%[4]s' 'smtp://%[2]s' --mail-from '%[3]s' --mail-rcpt '%[3]s' -T -

Retrieve the first message of the inbox with POP3:

  curl -s -u '%[3]s:%[4]s' 'pop3://%[10]s/1'

A delegated account: %[6]s, whose user signs in (device code). Until
then its logins fail with "needs login". In another terminal, run

  broker login -config %[5]s %[6]s

open the page it prints (the simulator's %[7]s/devicelogin),
enter the code, and sign in there as

  user           %[6]s
  password       %[8]s

Then the same commands work for it, with its own app password:

  app password   %[9]s
  status         broker status -config %[5]s

`, imapAddr, smtpAddr, devMailbox, password, cfgPath, devAgent, entra.URL(), agentPassword, agentAppPassword, addrs["pop3"])
	if err := printDevGraph(ctx, stdout, d.broker, smtpAddr); err != nil {
		d.close()
		return err
	}
	fmt.Fprint(stdout, "Press Ctrl-C to stop; the temporary state is deleted.\n\n")
	return d.run(ctx)
}

// devListenAddr is addr, or any free port when addr is taken, so that a
// second -dev or a leftover one does not stop a newcomer.
func devListenAddr(addr, proto string, log *slog.Logger) string {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Warn("dev listen address busy; using a random port", "proto", proto, "addr", addr)
		return "127.0.0.1:0"
	}
	l.Close()
	return addr
}

func rand32() string {
	return rand.Text()
}
