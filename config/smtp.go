package config

import (
	"fmt"
	"net"
	"strings"
	"time"
)

const (
	defaultSMTPListen = "127.0.0.1:587"
	// Upstream port 465 is submission over implicit TLS (RFC 8314).
	implicitTLSPort = "465"

	// maxConnectionsPerMailbox and maxConnectionWait bound the settings
	// of the same names in [imap] and [smtp].
	maxConnectionsPerMailbox = 100
	maxConnectionWait        = 10 * time.Minute
	// maxReuseIdleTimeout bounds [smtp] reuse_idle_timeout: Postfix's
	// smtpd_timeout, past which a kept connection would be found closed.
	maxReuseIdleTimeout = 5 * time.Minute
)

func (v *validator) smtp(raw *rawSMTP, apps []*App, accounts []*Account) *SMTP {
	const section = "smtp"
	s := &SMTP{
		Listener: *v.listener(section, defaultSMTPListen, &raw.rawListener, apps, func(c *Cloud) string { return c.SMTPHost }),
	}
	if _, port, err := net.SplitHostPort(s.Upstream); err == nil {
		s.UpstreamImplicitTLS = port == implicitTLSPort
	}

	if name, ok := v.str(section+".allow_unauthenticated_as", raw.AllowUnauthenticatedAs); ok {
		s.UnauthenticatedAs = v.unauthenticatedAs(section, name, accounts, &s.Listener)
	}

	s.MaxConnectionsPerMailbox, s.ConnectionWait = v.mailboxConnections(section, raw.MaxConnectionsPerMailbox, raw.ConnectionWait,
		DefaultSMTPMaxConnectionsPerMailbox, DefaultSMTPConnectionWait)
	s.ReuseIdleTimeout = DefaultSMTPReuseIdleTimeout
	key := section + ".reuse_idle_timeout"
	if d, ok := v.duration(key, raw.ReuseIdleTimeout); ok {
		if d < 0 || d > maxReuseIdleTimeout {
			v.errorf(key, "%s is out of range: 0s (no reuse) to %s", d, maxReuseIdleTimeout)
		} else {
			s.ReuseIdleTimeout = d
		}
	}
	s.Graph = v.graph(section, &raw.rawGraph, accounts)
	return s
}

// mailboxConnections validates a protocol section's
// max_connections_per_mailbox, whose default is Exchange Online's limit,
// and connection_wait.
func (v *validator) mailboxConnections(section string, rawMax number, rawWait text, defMax int, defWait time.Duration) (int, time.Duration) {
	max, wait := defMax, defWait
	key := section + ".max_connections_per_mailbox"
	if n, ok := v.integer(key, rawMax); ok {
		if n < 1 || n > maxConnectionsPerMailbox {
			v.errorf(key, "%d is out of range: 1 to %d (Exchange Online allows %d)", n, maxConnectionsPerMailbox, defMax)
		} else {
			max = int(n)
		}
	}
	key = section + ".connection_wait"
	if d, ok := v.duration(key, rawWait); ok {
		if d <= 0 || d > maxConnectionWait {
			v.errorf(key, "%s is out of range: more than 0s and at most %s", d, maxConnectionWait)
		} else {
			wait = d
		}
	}
	return max, wait
}

// unauthenticatedAs returns the mailbox of the account named by mailbox or
// login, or "" after reporting that there is none.
func (v *validator) unauthenticatedAs(section, name string, accounts []*Account, l *Listener) string {
	key := section + ".allow_unauthenticated_as"
	name = strings.ToLower(name)
	var mailbox string
	for _, a := range accounts {
		if a.Mailbox == name || a.Login == name {
			mailbox = a.Mailbox
			break
		}
	}
	if mailbox == "" {
		v.errorf(key, "no [[account]] has the mailbox or login %q", name)
		return ""
	}
	var open []string
	for _, list := range []struct {
		key   string
		addrs []string
	}{{"listen", l.Listen}, {"listen_tls", l.ListenTLS}} {
		for i, addr := range list.addrs {
			if host, err := checkHostPort(addr, true); err == nil && !isLoopback(host) {
				open = append(open, fmt.Sprintf("%q (%s.%s[%d])", addr, section, list.key, i+1))
			}
		}
	}
	if len(open) > 0 {
		v.warnf(key, "applies to loopback clients only: clients reaching %s from other addresses still have to AUTH", strings.Join(open, ", "))
	}
	return mailbox
}

// duration checks that an optional setting is a duration such as "30s"
// and returns it; ok is false when it is absent or wrong.
func (v *validator) duration(key string, t text) (d time.Duration, ok bool) {
	if !t.set {
		return 0, false
	}
	if t.wrongType != "" {
		v.errorf(key, "must be a duration such as \"30s\", not %s", t.wrongType)
		return 0, false
	}
	d, err := time.ParseDuration(t.s)
	if err != nil {
		v.errorf(key, "%q is not a duration such as \"30s\" or \"2m\"", t.s)
		return 0, false
	}
	return d, true
}
