package test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/test/harness"
	"github.com/mailbroker/broker/test/m365sim"
)

// TestDovecotTLSResumption: the upstream TLS configuration every proxy uses
// (proxy.UpstreamTLSConfig) resumes its session with a real Dovecot, for
// IMAP and POP3 alike: a warm pool's refills and every login that dials
// skip the full handshake.
func TestDovecotTLSResumption(t *testing.T) {
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	dc := harness.StartDovecot(t, harness.DovecotOptions{
		KeyID: entra.KeyID(), PublicKeyPEM: entra.PublicKeyPEM(),
		Issuers: []string{entra.Issuer(entra.AddTenant(tenant))}, Mailboxes: []string{mailbox}, POP3: true, ReuseLoginProcesses: true,
	})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(dc.CACertPEM)
	for _, addr := range []string{dc.IMAPAddr, dc.POP3Addr} {
		conf := proxy.UpstreamTLSConfig(&tls.Config{RootCAs: roots}, addr)
		for i, want := range []bool{false, true, true} {
			c, err := tls.Dial("tcp", addr, conf)
			if err != nil {
				t.Fatal(err)
			}
			// TLS 1.3 tickets arrive after the handshake: the greeting's
			// read takes them in.
			buf := make([]byte, 512)
			if _, err := c.Read(buf); err != nil {
				t.Fatal(err)
			}
			st := c.ConnectionState()
			c.Close()
			if st.DidResume != want {
				t.Fatalf("%s: handshake %d (TLS %x): resumed %v, want %v", addr, i+1, st.Version, st.DidResume, want)
			}
		}
	}
}
