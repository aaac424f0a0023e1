package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strings"
)

const defaultIMAPListen = "127.0.0.1:143"

func (v *validator) imap(raw *rawIMAP, apps []*App) *IMAP {
	const section = "imap"
	l := &IMAP{Listener: *v.listener(section, defaultIMAPListen, &raw.rawListener, apps, func(c *Cloud) string { return c.IMAPHost })}
	l.MaxConnectionsPerMailbox, l.ConnectionWait = v.mailboxConnections(section, raw.MaxConnectionsPerMailbox, raw.ConnectionWait,
		DefaultIMAPMaxConnectionsPerMailbox, DefaultIMAPConnectionWait)
	l.WarmConnections = v.warmConnections(section, raw.WarmConnections)
	return l
}

// listener validates the settings every protocol section has. listenDefault
// applies when the section names no listener; upstreamHost picks the
// protocol's host from the apps' cloud when upstream is not set.
func (v *validator) listener(section, listenDefault string, raw *rawListener, apps []*App, upstreamHost func(*Cloud) string) *Listener {
	l := &Listener{}
	listen, listenSet := v.list(section+".listen", raw.Listen)
	listenTLS, listenTLSSet := v.list(section+".listen_tls", raw.ListenTLS)
	// The default applies only to a section naming no listener at all, so
	// that listen_tls alone does not also open a plain-text port.
	if !listenSet && !listenTLSSet {
		listen = []string{listenDefault}
	}
	l.Listen = v.listenAddrs(section+".listen", listen)
	l.ListenTLS = v.listenAddrs(section+".listen_tls", listenTLS)
	if len(listen) == 0 && len(listenTLS) == 0 && raw.Listen.wrongType == "" && raw.ListenTLS.wrongType == "" {
		v.errorf(section, "no listener: set %[1]s.listen or %[1]s.listen_tls", section)
	}
	v.duplicateAddrs(section, l)

	l.TLSCertFile, l.TLSKeyFile = v.keyPair(section, raw)
	if len(l.ListenTLS) > 0 && !raw.TLSCertFile.set && !raw.TLSKeyFile.set {
		v.errorf(section+".listen_tls", "requires %[1]s.tls_cert_file and %[1]s.tls_key_file", section)
	}
	if l.TLSCertFile == "" {
		for i, addr := range l.Listen {
			host, _ := checkHostPort(addr, true)
			if !isLoopback(host) {
				v.warnf(fmt.Sprintf("%s.listen[%d]", section, i+1),
					"%q is not a loopback address and %s has no TLS: passwords would cross the network in clear", addr, section)
			}
		}
	}

	if up, ok := v.str(section+".upstream", raw.Upstream); ok {
		if _, err := checkHostPort(up, false); err != nil {
			v.errorf(section+".upstream", "%v", err)
		}
		l.Upstream = up
	} else if !raw.Upstream.set {
		l.Upstream = v.defaultUpstream(section, apps, upstreamHost)
	}
	if file, ok := v.str(section+".upstream_ca_file", raw.UpstreamCAFile); ok {
		l.UpstreamCAFile = v.resolve(file)
		v.caFile(section+".upstream_ca_file", l.UpstreamCAFile)
	}
	return l
}

func (v *validator) listenAddrs(key string, addrs []string) []string {
	for i, addr := range addrs {
		if _, err := checkHostPort(addr, true); err != nil {
			v.errorf(fmt.Sprintf("%s[%d]", key, i+1), "%v", err)
		}
	}
	return addrs
}

// duplicateAddrs reports an address listed twice, in this section or an
// earlier one. Port 0 (any free port) can be listed any number of times.
func (v *validator) duplicateAddrs(section string, l *Listener) {
	check := func(key string, addrs []string) {
		for i, addr := range addrs {
			k := fmt.Sprintf("%s.%s[%d]", section, key, i+1)
			if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
				continue
			}
			if prev, dup := v.listenKeys[addr]; dup {
				v.errorf(k, "%q is already listed as %s", addr, prev)
				continue
			}
			v.listenKeys[addr] = k
		}
	}
	check("listen", l.Listen)
	check("listen_tls", l.ListenTLS)
}

// keyPair returns the local TLS certificate and key files, both or neither.
func (v *validator) keyPair(section string, raw *rawListener) (cert, key string) {
	certKey, keyKey := section+".tls_cert_file", section+".tls_key_file"
	cert, certOK := v.str(certKey, raw.TLSCertFile)
	key, keyOK := v.str(keyKey, raw.TLSKeyFile)
	switch {
	case certOK && !keyOK && !raw.TLSKeyFile.set:
		v.errorf(keyKey, "required when %s is set", certKey)
	case keyOK && !certOK && !raw.TLSCertFile.set:
		v.errorf(certKey, "required when %s is set", keyKey)
	}
	if !certOK || !keyOK {
		return "", ""
	}
	cert, key = v.resolve(cert), v.resolve(key)
	certPEM, _, err := readSmallFile(cert)
	if err != nil {
		v.errorf(certKey, "%v", err)
		return "", ""
	}
	keyPEM, _, err := readSmallFile(key)
	if err != nil {
		v.errorf(keyKey, "%v", err)
		return "", ""
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		v.errorf(certKey, "%s and %s: %v", cert, key, err)
		return "", ""
	}
	return cert, key
}

func (v *validator) caFile(key, path string) {
	data, _, err := readSmallFile(path)
	if err != nil {
		v.errorf(key, "%v", err)
		return
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		v.errorf(key, "%s holds no PEM certificate", path)
	}
}

// defaultUpstream is the host of the apps' cloud; apps in different clouds
// leave no single default.
func (v *validator) defaultUpstream(section string, apps []*App, host func(*Cloud) string) string {
	var names []string
	var cloud *Cloud
	for _, a := range apps {
		if a.Cloud != nil && !slices.Contains(names, a.Cloud.Name) {
			names = append(names, a.Cloud.Name)
			cloud = a.Cloud
		}
	}
	switch len(names) {
	case 0:
		return host(CloudByName(DefaultCloud))
	case 1:
		return host(cloud)
	}
	v.errorf(section+".upstream", "apps use different clouds (%s): set %s.upstream", strings.Join(names, ", "), section)
	return ""
}
