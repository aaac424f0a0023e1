package test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/test/harness"
	"github.com/mailbroker/broker/test/m365sim"
)

// TestUpstreamTLSResumption: the upstream TLS configuration every proxy uses
// (proxy.UpstreamTLSConfig) resumes its session with a real Dovecot, for
// IMAP and POP3 alike, and with Postfix after STARTTLS: a warm pool's
// refills and every login that dials skip the full handshake.
func TestUpstreamTLSResumption(t *testing.T) {
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
	pf := harness.StartPostfix(t, harness.PostfixOptions{Dovecot: dc})
	pfRoots := x509.NewCertPool()
	pfRoots.AppendCertsFromPEM(pf.CACertPEM)
	conf := proxy.UpstreamTLSConfig(&tls.Config{RootCAs: pfRoots}, pf.SubmissionAddr)
	for i, want := range []bool{false, true, true} {
		c, err := gosmtp.DialStartTLS(pf.SubmissionAddr, conf)
		if err != nil {
			t.Fatal(err)
		}
		// A command after the handshake takes the TLS 1.3 tickets in.
		if err := c.Noop(); err != nil {
			t.Fatal(err)
		}
		st, _ := c.TLSConnectionState()
		c.Close()
		if st.DidResume != want {
			t.Fatalf("Postfix: STARTTLS %d (TLS %x): resumed %v, want %v", i+1, st.Version, st.DidResume, want)
		}
	}
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
