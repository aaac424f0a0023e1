package harness

import (
	"crypto/tls"
	"crypto/x509"
)

// TLSConfig returns a client configuration trusting only the instance's
// certificate.
func (d *Dovecot) TLSConfig() *tls.Config { return trusting(d.CACertPEM) }

// TLSConfig returns a client configuration trusting only the instance's
// certificate.
func (p *Postfix) TLSConfig() *tls.Config { return trusting(p.CACertPEM) }

func trusting(caPEM []byte) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}
