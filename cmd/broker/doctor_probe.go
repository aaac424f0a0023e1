package main

// broker doctor's network checks: DNS and TCP to each host, and the
// upstreams' TLS.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/mailbroker/broker/config"
)

// probeConnect resolves t's host and connects to it.
func probeConnect(ctx context.Context, t target) doctorResult {
	ctx, cancel := context.WithTimeout(ctx, doctorStepTimeout)
	defer cancel()
	host, port, err := net.SplitHostPort(t.addr)
	if err != nil {
		return fail(t.check, t.addr+": "+err.Error(), "Write the upstream as host:port in "+sectionOf(t)+".")
	}
	addrs := []string{host}
	if net.ParseIP(host) == nil {
		addrs, err = net.DefaultResolver.LookupHost(ctx, host)
		if err != nil {
			return fail(t.check, fmt.Sprintf("%s: DNS: %v", host, err),
				"Make "+host+" resolvable from this server: check /etc/resolv.conf and that the DNS server answers for Internet names (or a proxy's policy).")
		}
	}
	var dialer net.Dialer
	start := time.Now()
	conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(addrs[0], port))
	if err != nil {
		return fail(t.check, fmt.Sprintf("%s (%s): TCP: %v", t.addr, addrs[0], unwrapOp(err)),
			fmt.Sprintf("Allow outbound TCP from this server to %s in the firewall (and check %s names the right host).", t.addr, sectionOf(t)))
	}
	elapsed := time.Since(start)
	conn.Close()
	resolved := ""
	if addrs[0] != host {
		resolved = " → " + addrs[0]
		if len(addrs) > 1 {
			resolved += fmt.Sprintf(" (+%d)", len(addrs)-1)
		}
	}
	return pass(t.check, fmt.Sprintf("%s%s, connected in %d ms", t.addr, resolved, elapsed.Milliseconds()))
}

// sectionOf names the configuration key of t's address.
func sectionOf(t target) string {
	switch t.proto {
	case "imap":
		return "imap.upstream"
	case "smtp":
		return "smtp.upstream"
	case "pop3":
		return "pop3.upstream"
	}
	return "the app's authority (or cloud)"
}

// unwrapOp drops net.OpError's "dial tcp a:b:" prefix, which repeats the
// address.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// probeTLS connects to an upstream as the proxy does (implicit TLS, or
// SMTP's STARTTLS) and checks its certificate against broker's trust roots
// (the system's and upstream_ca_file), its expiry and the TLS version.
func probeTLS(ctx context.Context, t target) doctorResult {
	check := tlsCheck(t.proto)
	ctx, cancel := context.WithTimeout(ctx, doctorStepTimeout)
	defer cancel()
	verified, err := upstreamTLSConfig(t.lc)
	if err != nil {
		return fail(check, t.proto+".upstream_ca_file: "+err.Error(), "Point "+t.proto+".upstream_ca_file at a readable PEM file of the CA to trust, or remove it.")
	}
	host := verified.ServerName
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return fail(check, t.addr+": "+unwrapOp(err).Error(), "Allow outbound TCP to "+t.addr+".")
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if !t.implicitTLS {
		if r, ok := startTLS(conn, t); !ok {
			return r
		}
	}
	// Verify by hand after the handshake, to report what the certificate
	// is even when broker would not trust it; accept old versions, to
	// name them.
	tc := tls.Client(conn, &tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS10})
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(check, fmt.Sprintf("%s: TLS handshake: %v", t.addr, err), tlsHandshakeFix(t))
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return fail(check, t.addr+": no certificate", tlsHandshakeFix(t))
	}
	leaf := st.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range st.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, verr := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: verified.RootCAs, Intermediates: inter})
	version := tls.VersionName(st.Version)
	about := fmt.Sprintf("%s: %s, certificate %q issued by %q, valid until %s", t.addr, version,
		leaf.Subject.CommonName, leaf.Issuer.CommonName, leaf.NotAfter.Local().Format(time.DateOnly))
	if verr != nil {
		return fail(check, about+": "+verr.Error(), certFix(t, host, verr))
	}
	if st.Version < tls.VersionTLS12 {
		return fail(check, about+": Exchange Online requires TLS 1.2 or later",
			"Something between broker and "+t.addr+" speaks old TLS: point "+t.proto+".upstream at Exchange Online, or exempt it from TLS inspection.")
	}
	if left := time.Until(leaf.NotAfter); left < doctorCertWarning {
		return warn(check, fmt.Sprintf("%s, expires in %s", about, span(left)),
			"The upstream's certificate expires soon: if a TLS-inspecting proxy issued it, renew its CA's certificate for "+host+"; Microsoft renews its own well ahead.")
	}
	return pass(check, about)
}

// startTLS runs SMTP's greeting, EHLO and STARTTLS on conn; ok false
// comes with the failure.
func startTLS(conn net.Conn, t target) (doctorResult, bool) {
	check := checkTLSSMTP
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return fail(check, t.addr+": greeting: "+err.Error(), "Check that smtp.upstream is Exchange Online's SMTP submission service (smtp.office365.com:587)."), false
	}
	id, err := tp.Cmd("EHLO %s", hostname())
	if err != nil {
		return fail(check, t.addr+": EHLO: "+err.Error(), "Check the connection to "+t.addr+"."), false
	}
	tp.StartResponse(id)
	_, ext, err := tp.ReadResponse(250)
	tp.EndResponse(id)
	if err != nil {
		return fail(check, t.addr+": EHLO: "+err.Error(), "Check that smtp.upstream is Exchange Online's SMTP submission service (smtp.office365.com:587)."), false
	}
	if !hasExtension(ext, "STARTTLS") {
		return fail(check, t.addr+" offers no STARTTLS, and broker sends tokens only over TLS",
			"Use Exchange Online's smtp.office365.com:587 as smtp.upstream (or a port 465 upstream, which gets implicit TLS)."), false
	}
	id, err = tp.Cmd("STARTTLS")
	if err == nil {
		tp.StartResponse(id)
		_, _, err = tp.ReadResponse(220)
		tp.EndResponse(id)
	}
	if err != nil {
		return fail(check, t.addr+": STARTTLS: "+err.Error(), "Check that smtp.upstream is Exchange Online's SMTP submission service (smtp.office365.com:587)."), false
	}
	return doctorResult{}, true
}

func hasExtension(ehlo, ext string) bool {
	for _, line := range strings.Split(ehlo, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], ext) {
			return true
		}
	}
	return false
}

func tlsHandshakeFix(t target) string {
	if t.proto == "smtp" && t.implicitTLS {
		return "Check that " + t.addr + " speaks implicit TLS (port 465); Exchange Online's submission port 587 takes STARTTLS."
	}
	return "Check that " + t.proto + ".upstream is Exchange Online's (" + defaultUpstream(t.proto) + ") and that no proxy or firewall breaks TLS to it."
}

func defaultUpstream(proto string) string {
	c := config.CloudByName(config.DefaultCloud)
	switch proto {
	case "smtp":
		return c.SMTPHost
	case "pop3":
		return c.POPHost
	}
	return c.IMAPHost
}

// certFix says what to do about a certificate broker does not trust.
func certFix(t target, host string, err error) string {
	var unknown x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return "The certificate is not from a CA broker trusts: if a TLS-inspecting proxy or firewall sits in between, exempt " + host +
			" from inspection or put its CA certificate in " + t.proto + ".upstream_ca_file; otherwise check that " + t.proto + ".upstream is " + defaultUpstream(t.proto) + "."
	case errors.As(err, &hostErr):
		return "The certificate is not for " + host + ": set " + t.proto + ".upstream to the name the server's certificate carries (" + defaultUpstream(t.proto) + " for Exchange Online)."
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "The certificate has expired or is not yet valid: check this server's clock (timedatectl), and whether a TLS-inspecting proxy serves an outdated certificate."
	}
	return "Check " + t.proto + ".upstream and " + t.proto + ".upstream_ca_file: broker verifies the upstream exactly so."
}

// dialProbe starts a login check's step, bounded by doctorStepTimeout
// in the context it returns, and connects to lc's upstream with its
// upstream TLS settings: over TLS, or with plain for the protocol to
// start TLS itself with conf. The connection closes when the step's time
// is up; done closes it sooner and ends the step.
func dialProbe(ctx context.Context, lc *config.Listener, plain bool) (_ context.Context, conn net.Conn, conf *tls.Config, done func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, doctorStepTimeout)
	conf, err = upstreamTLSConfig(lc)
	if err != nil {
		cancel()
		return nil, nil, nil, nil, err
	}
	var d interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	} = &tls.Dialer{Config: conf}
	if plain {
		d = &net.Dialer{}
	}
	conn, err = d.DialContext(ctx, "tcp", lc.Upstream)
	if err != nil {
		cancel()
		return nil, nil, nil, nil, unwrapOp(err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return ctx, conn, conf, func() {
		stop()
		conn.Close()
		cancel()
	}, nil
}

// connectionFailure is a login check's line when it did not get an
// answer from addr.
func connectionFailure(check, addr string, err error) doctorResult {
	return fail(check, fmt.Sprintf("%s: %v", addr, err), "Check the connection to "+addr+" (the checks above), then run broker doctor again.")
}

// withChallenge adds a refusal's error challenge, if any, to its detail.
func withChallenge(detail, challenge string) string {
	if challenge == "" {
		return detail
	}
	return detail + " (challenge " + oneLineText(challenge) + ")"
}

// adviceResult is a login check's line for a refusal that proxy explains
// with advice: a warning when the refusal is temporary, else a failure.
func adviceResult(check, detail string, acct *config.Account, advice string, temporary bool) doctorResult {
	fix := upperFirst(fillAdvice(advice, acct))
	if temporary {
		return warn(check, detail, fix+"; run broker doctor again later.")
	}
	return fail(check, detail, fix+".")
}
