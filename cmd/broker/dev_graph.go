package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/test/m365sim"
)

// devGraphMailbox is the -dev account whose mail goes through the
// simulated Microsoft Graph rather than SMTP AUTH.
const devGraphMailbox = "scanner@contoso.com"

// devGraphRoles are what the -dev app needs for it.
var devGraphRoles = []string{"https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite"}

// startDevGraph starts a simulated Graph that delivers into imap, and
// returns the configuration to add: [smtp] keys and an [[account]].
func startDevGraph(entra *m365sim.Entra, imap *m365sim.IMAP, dir string) (smtpKeys, account string, stop func(), err error) {
	if err := imap.AddMailbox(devGraphMailbox); err != nil {
		return "", "", nil, err
	}
	g, err := m365sim.NewGraph(entra, m365sim.GraphOptions{IMAP: imap})
	if err != nil {
		return "", "", nil, err
	}
	ca := filepath.Join(dir, "graph-ca.pem")
	if err := os.WriteFile(ca, g.CACertPEM(), 0o600); err != nil {
		g.Close()
		return "", "", nil, err
	}
	smtpKeys = fmt.Sprintf("graph_url = %q\ngraph_ca_file = %q\n", g.URL(), ca)
	account = fmt.Sprintf("\n[[account]]\nmailbox = %q\napp = \"contoso\"\nflow = \"client_credentials\"\nsmtp_via = \"graph\"\n", devGraphMailbox)
	return smtpKeys, account, func() { g.Close() }, nil
}

// withDevGraph adds the Graph keys to the [smtp] section of a -dev
// configuration and the Graph account at its end.
func withDevGraph(cfg, smtpKeys, account string) string {
	return strings.Replace(cfg, "[smtp]\n", "[smtp]\n"+smtpKeys, 1) + account
}

// printDevGraph issues the Graph account's app password and prints how
// to send through it.
func printDevGraph(ctx context.Context, w io.Writer, b *broker.Broker, smtpAddr string) error {
	_, password, err := b.AddAppPassword(ctx, devGraphMailbox, "dev")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, `Through Microsoft Graph instead of SMTP AUTH (smtp_via = "graph"): %[1]s,
app password %[2]s. Its message goes out with Graph's sendMail (larger ones
as a draft with upload sessions) and arrives in %[3]s's inbox:

  printf 'From: %[1]s\r\nTo: %[3]s\r\nSubject: Hello through Graph\r\n\r\nIt works.\r\n' | curl -s -u '%[1]s:%[2]s' 'smtp://%[4]s' --mail-from '%[1]s' --mail-rcpt '%[3]s' -T -

`, devGraphMailbox, password, devMailbox, smtpAddr)
	return nil
}
