package config

import "net"

// Metrics is the [metrics] section: where the Prometheus endpoint listens.
//
//	[metrics]
//	# host:port of /metrics, /healthz and /readyz. Loopback only: the
//	# metrics name the mailboxes, and nothing on them needs a password.
//	# Put a reverse proxy with TLS and authentication in front to scrape
//	# from another host.
//	listen = "127.0.0.1:9143"
type Metrics struct {
	// Listen is a loopback host:port; "" when the section is absent or
	// sets no listen, and then nothing is served.
	Listen string
}

type rawMetrics struct {
	Listen text `toml:"listen"`
}

const keyMetricsListen = "metrics.listen"

// metrics validates [metrics]; raw is nil when the section is absent.
func (v *validator) metrics(raw *rawMetrics) Metrics {
	var m Metrics
	if raw == nil {
		return m
	}
	addr, ok := v.str(keyMetricsListen, raw.Listen)
	if !ok {
		return m
	}
	host, err := checkHostPort(addr, true)
	switch {
	case err != nil:
		v.errorf(keyMetricsListen, "%v", err)
		return m
	case !isLoopback(host):
		v.errorf(keyMetricsListen, "%q is not a loopback address: metrics are served on loopback only (127.0.0.1, [::1] or localhost)", addr)
		return m
	}
	if prev, dup := v.listenKeys[addr]; dup && !anyPort(addr) {
		v.errorf(keyMetricsListen, "%q is already listed as %s", addr, prev)
		return m
	}
	m.Listen = addr
	return m
}

// anyPort: addr has port 0, which any number of listeners may name.
func anyPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}
