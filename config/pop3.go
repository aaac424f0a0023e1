package config

import "time"

const (
	defaultPOP3Listen = "127.0.0.1:110"

	// DefaultPOP3MaxConnectionsPerMailbox caps upstream POP3 sessions per
	// mailbox: Exchange's own default (Set-PopSettings
	// MaxConnectionsPerUser) is 16; Exchange Online publishes none.
	DefaultPOP3MaxConnectionsPerMailbox = 16
	DefaultPOP3ConnectionWait           = 30 * time.Second
)

// POP3 is the [pop3] section:
//
//	[pop3]
//	listen = ["127.0.0.1:110"]           # the default
//	listen_tls = ["0.0.0.0:995"]         # implicit TLS; needs tls_cert_file
//	tls_cert_file = "/etc/broker/tls.crt" # also enables STLS on listen
//	tls_key_file = "/etc/broker/tls.key"
//	upstream = "outlook.office365.com:995" # default: the apps' cloud's
//	upstream_ca_file = ""
//	max_connections_per_mailbox = 16
//	connection_wait = "30s"
//	warm_connections = 4                 # 0: every login connects upstream
//
// With [pop3], delegated accounts' default scopes include
// POP.AccessAsUser.All (AccountScopes); app-only tokens carry
// POP.AccessAsApp when the app has that role.
type POP3 struct {
	Listener
	// MaxConnectionsPerMailbox caps concurrent upstream POP3 sessions per
	// mailbox (max_connections_per_mailbox, 1 to 100). Default 16.
	MaxConnectionsPerMailbox int
	// ConnectionWait is how long a login waits for a free upstream
	// session of its mailbox before the client gets -ERR [IN-USE]
	// (connection_wait, up to 10m). Default 30s.
	ConnectionWait time.Duration
	// WarmConnections is the most upstream connections kept connected
	// and greeted for the next logins (warm_connections, 0 to 16; 0:
	// none). Default 4.
	WarmConnections int
}

type rawPOP3 struct {
	rawListener
	MaxConnectionsPerMailbox number `toml:"max_connections_per_mailbox"`
	ConnectionWait           text   `toml:"connection_wait"`
	WarmConnections          number `toml:"warm_connections"`
}

func (v *validator) pop3(raw *rawPOP3, apps []*App) *POP3 {
	const section = "pop3"
	p := &POP3{Listener: *v.listener(section, defaultPOP3Listen, &raw.rawListener, apps, func(c *Cloud) string { return c.POPHost })}
	p.MaxConnectionsPerMailbox, p.ConnectionWait = v.mailboxConnections(section, raw.MaxConnectionsPerMailbox, raw.ConnectionWait,
		DefaultPOP3MaxConnectionsPerMailbox, DefaultPOP3ConnectionWait)
	p.WarmConnections = v.warmConnections(section, raw.WarmConnections)
	return p
}

// POPScope is the delegated POP3 permission.
func (c *Cloud) POPScope() string { return c.DelegatedResource + "/POP.AccessAsUser.All" }

// AccountScopes are an account's default scopes in a file with ([pop3]) or
// without a POP3 section: DefaultScopes, and for delegated flows with pop3
// also POP.AccessAsUser.All. App-only tokens are asked for
// "<resource>/.default" either way: they carry every role the app has,
// POP.AccessAsApp included once granted.
func AccountScopes(flow Flow, c *Cloud, pop3 bool) []string {
	scopes := DefaultScopes(flow, c)
	if pop3 && flow != FlowClientCredentials {
		scopes = append(scopes, c.POPScope())
	}
	return scopes
}
