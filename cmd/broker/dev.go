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

// The -dev tenant. The client ID is any GUID; nothing leaves the machine.
const (
	devTenant   = "contoso.onmicrosoft.com"
	devClientID = "00000000-0000-4000-8000-00000000d3e0"
	devMailbox  = "support@contoso.com"
)

const devConfig = `# Written by broker serve -dev.
state_dir = %q

[imap]
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
`

// serveDev runs the real daemon against an in-process simulated Microsoft
// 365, with a temporary state directory, a configuration written the same
// way an administrator would, and one demo mailbox with an app password.
func serveDev(ctx context.Context, listen string, stdout io.Writer, log *slog.Logger) error {
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
		Roles:     []string{"IMAP.AccessAsApp"},
		Mailboxes: []string{devMailbox},
	})
	upstream, err := m365sim.NewIMAP(entra)
	if err != nil {
		return err
	}
	defer upstream.Close()
	if err := upstream.AddMailbox(devMailbox); err != nil {
		return err
	}

	if l, err := net.Listen("tcp", listen); err != nil {
		log.Warn("dev listen address busy; using a random port", "addr", listen)
		listen = "127.0.0.1:0"
	} else {
		l.Close()
	}
	files := map[string][]byte{
		"client.secret":   []byte(secret + "\n"),
		"upstream-ca.pem": upstream.CACertPEM(),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	cfgPath := filepath.Join(dir, "broker.toml")
	cfgText := fmt.Sprintf(devConfig, filepath.Join(dir, "state"), listen, upstream.Addr(),
		filepath.Join(dir, "upstream-ca.pem"), devTenant, devClientID,
		filepath.Join(dir, "client.secret"), entra.URL(), devMailbox)
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
	addr := d.listeners[0].l.Addr().String()
	fmt.Fprintf(stdout, `
broker is running against a simulated Microsoft 365; nothing leaves this machine.

  IMAP proxy     %s  (LOGIN or AUTHENTICATE PLAIN, plain text on loopback)
  mailbox        %s
  app password   %s
  config         %s

List the inbox through the proxy:

  curl -s -u '%s:%s' 'imap://%s/INBOX' -X 'FETCH 1:* (FLAGS ENVELOPE)'

Press Ctrl-C to stop; the temporary state is deleted.

`, addr, devMailbox, password, cfgPath, devMailbox, password, addr)
	return d.run(ctx)
}

func rand32() string {
	return rand.Text()
}
