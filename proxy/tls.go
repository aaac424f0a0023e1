package proxy

import (
	"crypto/tls"
	"net"
)

// UpstreamTLSConfig copies an upstream TLS client configuration (nil: the
// defaults), naming upstream's host (host:port) as ServerName unless set,
// with TLS 1.2 at least (RFC 8996 deprecates older versions).
func UpstreamTLSConfig(c *tls.Config, upstream string) *tls.Config {
	conf := &tls.Config{}
	if c != nil {
		conf = c.Clone()
	}
	if conf.ServerName == "" {
		if host, _, err := net.SplitHostPort(upstream); err == nil {
			conf.ServerName = host
		}
	}
	conf.MinVersion = max(conf.MinVersion, tls.VersionTLS12)
	return conf
}

// LocalTLSConfig copies the local certificate's configuration, with TLS
// 1.2 at least; nil stays nil (no STARTTLS).
func LocalTLSConfig(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	conf := c.Clone()
	conf.MinVersion = max(conf.MinVersion, tls.VersionTLS12)
	return conf
}
