package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy/graph"
	"github.com/mailbroker/broker/proxy/smtp"
)

// graphDialer is the Microsoft Graph upstream of the accounts whose SMTP
// submissions go through Graph (smtp_via = "graph"); nil when none does.
func (d *daemon) graphDialer(sc *config.SMTP) (smtp.Dialer, error) {
	urls := make(map[string]string)
	for _, a := range d.cfg.Accounts {
		if a.ViaGraph() {
			urls[strings.ToLower(a.Mailbox)] = a.GraphURL
		}
	}
	if len(urls) == 0 {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if sc.Graph.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(sc.Graph.CAFile)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate found", sc.Graph.CAFile)
		}
		conf.RootCAs = pool
	}
	fallback := sc.Graph.URL
	if fallback == "" {
		fallback = config.CloudByName(config.DefaultCloud).GraphResource
	}
	for m, u := range urls {
		d.log.Info("smtp: account sends through Microsoft Graph", "account", m, "graph_url", u,
			"save_to_sent_items", sc.Graph.SaveToSentItems)
	}
	return graph.NewDialer(&graph.Options{
		URL: func(account string) string {
			if u := urls[strings.ToLower(account)]; u != "" {
				return u
			}
			return fallback
		},
		TLS:             conf,
		Logger:          d.log,
		SaveToSentItems: sc.Graph.SaveToSentItems,
		Hostname:        hostname(),
		Observer:        d.metrics,
	}), nil
}
