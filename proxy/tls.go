package proxy

import (
	"crypto/tls"
	"net"
)

// upstreamSessionCacheSize bounds the TLS sessions kept for resumption:
// a server has one upstream host.
const upstreamSessionCacheSize = 8

// UpstreamTLSConfig copies an upstream TLS client configuration (nil: the
// defaults), naming upstream's host (host:port) as ServerName unless set,
// with TLS 1.2 at least (RFC 8996 deprecates older versions), and with a
// session cache of its own unless c has one: the next handshakes to
// upstream resume, a round trip less where TLS 1.2 is spoken and far less
// CPU on both sides.
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
	if conf.ClientSessionCache == nil {
		conf.ClientSessionCache = tls.NewLRUClientSessionCache(upstreamSessionCacheSize)
	}
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
