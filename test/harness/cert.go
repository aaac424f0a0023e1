package harness

import (
	"crypto/tls"
	"crypto/x509"
)

// TLSConfig returns a client configuration trusting only the instance's
// certificate.
func (d *Dovecot) TLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(d.CACertPEM)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}
