// Package config reads broker.toml. The file is decoded into raw structs,
// then validated into the typed Config below with defaults filled in, so the
// rest of broker never sees an unchecked value.
package config

import (
	"crypto"
	"crypto/x509"
	"log/slog"
	"time"
)

// Flow names how an account obtains its tokens.
type Flow string

const (
	FlowClientCredentials Flow = "client_credentials"
	FlowDeviceCode        Flow = "device_code"
	FlowAuthCode          Flow = "auth_code"
	FlowPassword          Flow = "password"
)

// Config is a validated broker.toml.
type Config struct {
	// Path is the file the configuration was read from.
	Path string
	// StateDir holds the database and, unless systemd passes one, the
	// sealing key. Default /var/lib/broker.
	StateDir string
	// ControlSocket is the control socket's path (control_socket). Default:
	// DefaultControlSocketFor(StateDir), a rule of the configuration alone
	// so that the daemon and the CLI agree. "" in a Config built by hand
	// means state_dir/control.sock.
	ControlSocket string
	// LogLevel is the daemon's least severe level logged (log_level:
	// debug, info, warn or error). Default info.
	LogLevel slog.Level

	// Limits are the [limits] section, defaults filled in when absent.
	Limits Limits

	// IMAP is nil when the file has no [imap] section.
	IMAP *IMAP
	// SMTP is nil when the file has no [smtp] section.
	SMTP *SMTP
	// POP3 is nil when the file has no [pop3] section.
	POP3 *POP3
	// Metrics is the [metrics] section; its Listen is "" when metrics
	// are off.
	Metrics Metrics

	Apps     []*App
	Accounts []*Account

	// Warnings are findings that do not stop broker but that an operator
	// should see, each formatted like an error: "file:line: key: message".
	Warnings []string
}

// Listener is a protocol section such as [imap].
type Listener struct {
	// Listen are plain-text addresses (STARTTLS offered when TLS is set).
	Listen []string
	// ListenTLS are implicit-TLS addresses; they require TLS.
	ListenTLS []string
	// Upstream is host:port. Default: the cloud's host for this protocol.
	Upstream string
	// UpstreamCAFile adds trust roots to the system pool; "" = system only.
	UpstreamCAFile string
	// TLSCertFile and TLSKeyFile enable local TLS; both or neither.
	TLSCertFile string
	TLSKeyFile  string
}

// Limits is the [limits] section: bounds on what clients may hold, for
// every protocol together.
//
//	[limits]
//	# Client connections at once, all listeners of all protocols together.
//	max_connections = 1000
//	# Client connections at once from one source: an IPv4 address or an
//	# IPv6 /64, loopback included (a mail client opens a few; a runaway
//	# script thousands). At most max_connections.
//	max_connections_per_source = 100
//	# How long a client has from connecting to logging in (IMAP LOGIN or
//	# AUTHENTICATE, SMTP AUTH or, with allow_unauthenticated_as, its first
//	# MAIL), however slowly it sends. 1s to 10m.
//	pre_auth_timeout = "60s"
//	# How long a stopping broker (SIGTERM) lets sessions end by
//	# themselves: SMTP transactions finish, IMAP clients get a BYE between
//	# commands. 1s to 1h.
//	drain_timeout = "30s"
//
// A connection over a cap gets one line (IMAP "* BYE Too many
// connections", SMTP "421 4.7.0 Too many connections") and is closed.
type Limits struct {
	MaxConnections          int
	MaxConnectionsPerSource int
	PreAuthTimeout          time.Duration
	DrainTimeout            time.Duration
}

// IMAP is the [imap] section.
type IMAP struct {
	Listener
	// MaxConnectionsPerMailbox caps concurrent upstream IMAP sessions per
	// mailbox (max_connections_per_mailbox, 1 to 100). Default 20: Exchange
	// Online allows about 20 and refuses more.
	MaxConnectionsPerMailbox int
	// ConnectionWait is how long a login waits for a free upstream session
	// of its mailbox before the client gets NO [UNAVAILABLE]
	// (connection_wait, up to 10m). Default 30s.
	ConnectionWait time.Duration
	// WarmConnections is the most upstream connections kept connected
	// and greeted for the next logins (warm_connections, 0 to 16; 0:
	// none). Default 4.
	WarmConnections int
}

// SMTP is the [smtp] section.
type SMTP struct {
	Listener
	// UpstreamImplicitTLS: the upstream port is 465, spoken to with TLS
	// from the first byte; any other port gets STARTTLS.
	UpstreamImplicitTLS bool
	// UnauthenticatedAs is the mailbox of a configured account that
	// loopback clients may submit as without AUTH; "" = AUTH required.
	UnauthenticatedAs string
	// MaxConnectionsPerMailbox caps concurrent upstream connections per
	// mailbox. Default 3, Exchange Online's limit.
	MaxConnectionsPerMailbox int
	// ConnectionWait is how long a session waits for a free connection
	// before the client is told to retry. Default 30s.
	ConnectionWait time.Duration
	// ReuseIdleTimeout is how long an upstream connection, still
	// authenticated after its client left, waits for the next session of
	// the same mailbox, holding one of its connections
	// (reuse_idle_timeout, up to 5m). 0: no reuse. Default 30s.
	ReuseIdleTimeout time.Duration
	// Graph is the upstream of accounts sending through Microsoft Graph
	// (smtp_via = "graph"; config/graph.go).
	Graph Graph
}

// Cloud is a Microsoft national cloud.
type Cloud struct {
	Name      string // global, usgovhigh, usgovdod, china
	Authority string // https://login.microsoftonline.com
	IMAPHost  string // outlook.office365.com:993
	SMTPHost  string // smtp.office365.com:587
	POPHost   string // outlook.office365.com:995
	// Resource prefixes delegated scopes and forms the app-only scope
	// Resource + "/.default" (global: https://outlook.office365.com for
	// .default, https://outlook.office.com for delegated scopes).
	AppResource       string
	DelegatedResource string
	// GraphResource is Microsoft Graph's resource, for tokens that local
	// tools ask for (`broker token -scope graph`).
	GraphResource string
}

// App is one Entra app registration. It authenticates with a client secret,
// with a certificate, or not at all (a public client).
type App struct {
	Name     string
	Tenant   string // domain or directory (tenant) id
	ClientID string
	// ClientSecret is read from client_secret_file; never logged.
	ClientSecret     string
	ClientSecretFile string
	// ClientSecretExpires is when the secret stops working, as the
	// administrator noted it; zero when unknown.
	ClientSecretExpires time.Time
	// Certificate and Key sign client assertions when set (client_
	// certificate_file and client_key_file); Key is an RSA key, never logged.
	Certificate *x509.Certificate
	Key         crypto.Signer
	// CertificateFile and KeyFile name where Certificate and Key came from;
	// broker watches them, and ClientSecretFile, for a renewed credential.
	CertificateFile string
	KeyFile         string
	// RedirectURI is where the authorization code flow's browser is sent.
	// Default DefaultRedirectURI, which Entra matches on any port.
	RedirectURI string
	Cloud       *Cloud
	// Authority is the identity platform base URL, without tenant.
	Authority string
}

// Public reports whether the app has no credential of its own: a public
// client, which needs "Allow public client flows" for device code and
// password sign-ins.
func (a *App) Public() bool { return a.ClientSecret == "" && a.Key == nil }

// TokenURL is the v2.0 token endpoint of the app's tenant.
func (a *App) TokenURL() string { return a.Authority + "/" + a.Tenant + "/oauth2/v2.0/token" }

// DeviceCodeURL is the v2.0 device authorization endpoint.
func (a *App) DeviceCodeURL() string {
	return a.Authority + "/" + a.Tenant + "/oauth2/v2.0/devicecode"
}

// AuthURL is the v2.0 authorization endpoint.
func (a *App) AuthURL() string { return a.Authority + "/" + a.Tenant + "/oauth2/v2.0/authorize" }

// Account is one mailbox broker logs in to upstream.
type Account struct {
	// Mailbox is the XOAUTH2 user=, lower case.
	Mailbox string
	// Login is the local login name, lower case; default Mailbox.
	Login string
	// LoginUser is the user who signs in for a delegated flow, lower case:
	// Mailbox itself, or a delegate with FullAccess to a shared Mailbox.
	// Accounts with the same App and LoginUser share one sign-in. Empty for
	// client credentials.
	LoginUser string
	App       *App
	Flow      Flow
	// Scopes are requested for the account's upstream token; default
	// DefaultScopes.
	Scopes []string
	// SMTPVia is where the account's SMTP submissions go: SMTPViaSMTP
	// (Exchange's SMTP AUTH) or SMTPViaGraph (Microsoft Graph's mail
	// API). Default [smtp] smtp_via, else SMTPViaSMTP.
	SMTPVia SMTPVia
	// GraphURL is Microsoft Graph's service root for the account: [smtp]
	// graph_url, else its cloud's Graph host. Set when SMTPVia is graph.
	GraphURL string
}

// Delegated reports whether a user signs in for the account.
func (a *Account) Delegated() bool { return a.Flow != FlowClientCredentials }

// DefaultScopes are the scopes of a flow: the app's roles on Exchange
// Online for app-only tokens, the IMAP and SMTP permissions with a refresh
// token for delegated ones.
func DefaultScopes(flow Flow, c *Cloud) []string {
	if flow == FlowClientCredentials {
		return []string{c.AppScope()}
	}
	return c.DelegatedScopes()
}

// Defaults.
const (
	DefaultPath     = "/etc/broker/broker.toml"
	DefaultStateDir = "/var/lib/broker"
	// DefaultRedirectURI is the redirect URI of the authorization code
	// flow. Entra ignores the port of http://localhost, so one registered
	// URI serves both the loopback listener and the pasted address.
	DefaultRedirectURI = "http://localhost"
	// DefaultFlow is the flow of accounts that name none.
	DefaultFlow = FlowDeviceCode

	// DefaultSMTPMaxConnectionsPerMailbox is Exchange Online's limit of
	// concurrent SMTP connections per mailbox.
	DefaultSMTPMaxConnectionsPerMailbox = 3
	DefaultSMTPConnectionWait           = 30 * time.Second
	DefaultSMTPReuseIdleTimeout         = 30 * time.Second
	// DefaultIMAPMaxConnectionsPerMailbox is about Exchange Online's limit
	// of concurrent IMAP sessions per mailbox.
	DefaultIMAPMaxConnectionsPerMailbox = 20
	DefaultIMAPConnectionWait           = 30 * time.Second

	// DefaultMaxConnections, DefaultMaxConnectionsPerSource and
	// DefaultPreAuthTimeout are [limits]' defaults.
	DefaultMaxConnections          = 1000
	DefaultMaxConnectionsPerSource = 100
	DefaultPreAuthTimeout          = 60 * time.Second
	// DefaultDrainTimeout bounds a stop's drain: below the unit's
	// TimeoutStopSec, so that systemd never has to kill broker.
	DefaultDrainTimeout = 30 * time.Second
)
