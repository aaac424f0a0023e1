package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy/pop3"
	"github.com/mailbroker/broker/test/m365sim"
)

// setupPOP3 builds the POP3 proxy of [pop3] and binds its listeners.
func (d *daemon) setupPOP3(pc *config.POP3) error {
	return d.setupProxy("pop3", &pc.Listener, func(upstreamTLS, localTLS *tls.Config) (func(net.Listener) error, error) {
		d.pop3 = pop3.NewServer(&pop3.Options{
			Upstream:    pc.Upstream,
			UpstreamTLS: upstreamTLS,
			TLS:         localTLS,
			Auth:        d.broker,
			Logger:      d.log,

			Limiter:                  d.limiter,
			PreAuthTimeout:           d.cfg.Limits.PreAuthTimeout,
			MaxConnectionsPerMailbox: pc.MaxConnectionsPerMailbox,
			ConnectionWait:           pc.ConnectionWait,
			Slots:                    d.slotsFor("pop3", pc.MaxConnectionsPerMailbox),
			Observer:                 d.metrics,
			WarmConnections:          pc.WarmConnections,
		})
		return d.pop3.Serve, nil
	})
}

// devPOP3Config is the [pop3] section of serve -dev's configuration.
const devPOP3Config = `
[pop3]
listen = [%q]
upstream = %q
upstream_ca_file = %q
`

// startDevPOP3 starts the simulated POP3 service of serve -dev over the
// simulated IMAP server's mailboxes, and returns the [pop3] section that
// points broker at it (listening on listen, or any free port when it is
// taken) and a function that stops it.
func startDevPOP3(entra *m365sim.Entra, mailboxes *m365sim.IMAP, dir, listen string, log *slog.Logger) (section string, stop func(), err error) {
	up, err := m365sim.NewPOP3(entra, mailboxes, m365sim.POP3Options{})
	if err != nil {
		return "", nil, err
	}
	ca := filepath.Join(dir, "pop3-upstream-ca.pem")
	if err := os.WriteFile(ca, up.CACertPEM(), 0o600); err != nil {
		up.Close()
		return "", nil, err
	}
	listen = devListenAddr(listen, "pop3", log)
	return fmt.Sprintf(devPOP3Config, listen, up.Addr(), ca), func() { up.Close() }, nil
}
