package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"time"
)

const (
	// DefaultSMTPMaxConnectionsPerMailbox is Exchange Online's limit of
	// concurrent SMTP connections per mailbox; a fourth gets 432 4.3.2.
	DefaultSMTPMaxConnectionsPerMailbox = 3
	// DefaultSMTPConnectionWait is how long a session waits for one of its
	// mailbox's upstream connections before the client gets a 4xx.
	DefaultSMTPConnectionWait = 30 * time.Second
	// DefaultSMTPReadTimeout is how long the client may stay silent: the
	// server timeout of RFC 5321 §4.5.3.2.7.
	DefaultSMTPReadTimeout = 5 * time.Minute
	// DefaultSMTPDialTimeout bounds connecting to upstream: TCP, STARTTLS
	// or implicit TLS, EHLO.
	DefaultSMTPDialTimeout = 15 * time.Second
	// DefaultSMTPLoginTimeout bounds a whole login: the Authenticator, the
	// wait for a connection slot, the dial and AUTH XOAUTH2.
	DefaultSMTPLoginTimeout = DefaultSMTPConnectionWait + 45*time.Second
	// DefaultSMTPCommandTimeout bounds upstream's reply to one command
	// (RFC 5321 §4.5.3.2.2–4 give MAIL and RCPT 5 minutes).
	DefaultSMTPCommandTimeout = 5 * time.Minute
	// DefaultSMTPDataTimeout bounds upstream's reply to the end of DATA
	// (RFC 5321 §4.5.3.2.6: 10 minutes).
	DefaultSMTPDataTimeout = 10 * time.Minute
	// DefaultSMTPMaxLoginFailures is how many failed AUTHs a connection
	// gets before it is closed.
	DefaultSMTPMaxLoginFailures = 3
	// DefaultSMTPMaxMessageBytes is advertised as SIZE until upstream's
	// own limit is known: Exchange Online's 150 MiB.
	DefaultSMTPMaxMessageBytes = 157286400
)

// SMTPOptions configures an SMTPServer. Zero values are documented defaults.
type SMTPOptions struct {
	// Upstream is the host:port of the upstream submission server.
	// Required.
	Upstream string
	// UpstreamImplicitTLS: upstream speaks TLS from the first byte (port
	// 465). Otherwise STARTTLS is required before AUTH: an upstream that
	// does not offer it is refused and no token is sent.
	UpstreamImplicitTLS bool
	// UpstreamTLS configures the upstream TLS client (RootCAs etc.). Its
	// ServerName defaults to Upstream's host and its MinVersion is at
	// least TLS 1.2. Nil means the defaults.
	UpstreamTLS *tls.Config
	// TLS holds the local certificate and enables STARTTLS. Nil: no
	// STARTTLS. (A listener from tls.NewListener is implicit TLS.)
	TLS *tls.Config
	// Auth checks local logins. Required. For UnauthenticatedAs it must
	// also be an AccountAuthenticator.
	Auth Authenticator
	// Logger receives a line per session start and end, per relayed
	// message and per failed login. Nil means slog.Default().
	Logger *slog.Logger
	// Hostname is the name in the greeting and in EHLO to upstream.
	// Default "localhost".
	Hostname string

	// UnauthenticatedAs lets loopback clients submit without AUTH, as this
	// account. "" (the default) requires AUTH from everyone; clients off
	// loopback always have to AUTH.
	UnauthenticatedAs string
	// MaxConnectionsPerMailbox caps concurrent upstream connections per
	// account: DefaultSMTPMaxConnectionsPerMailbox.
	MaxConnectionsPerMailbox int
	// ConnectionWait: DefaultSMTPConnectionWait.
	ConnectionWait time.Duration

	// ReadTimeout: DefaultSMTPReadTimeout.
	ReadTimeout time.Duration
	// DialTimeout: DefaultSMTPDialTimeout.
	DialTimeout time.Duration
	// LoginTimeout: DefaultSMTPLoginTimeout.
	LoginTimeout time.Duration
	// CommandTimeout: DefaultSMTPCommandTimeout.
	CommandTimeout time.Duration
	// DataTimeout: DefaultSMTPDataTimeout.
	DataTimeout time.Duration
	// MaxLoginFailures: DefaultSMTPMaxLoginFailures.
	MaxLoginFailures int
}

// SMTPServer accepts local SMTP clients and relays their messages upstream,
// command by command, over an XOAUTH2-authenticated connection.
type SMTPServer struct {
	opts SMTPOptions
	srv  *connServer
}

// NewSMTPServer returns a server configured by opts, which it copies.
func NewSMTPServer(opts *SMTPOptions) *SMTPServer {
	s := &SMTPServer{opts: *opts}
	logger := s.opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s.srv = newConnServer(logger.With("proto", string(SMTP)), func(tc *trackedConn) {})
	return s
}

// Serve accepts connections on l until Close or Shutdown, then returns
// ErrServerClosed. Connections that l returns as *tls.Conn are implicit TLS.
func (s *SMTPServer) Serve(l net.Listener) error {
	if s.opts.Upstream == "" || s.opts.Auth == nil {
		return errors.New("proxy: SMTPOptions.Upstream and Auth are required")
	}
	return s.srv.serve(l)
}

// Close closes the listeners and every session now.
func (s *SMTPServer) Close() error { return s.srv.close() }

// Shutdown stops accepting, lets transactions in progress finish and closes
// idle sessions; when ctx is done it closes the sessions left and returns
// ctx's error. A message cut off this way was never acknowledged.
func (s *SMTPServer) Shutdown(ctx context.Context) error { return s.srv.shutdown(ctx) }

// Sessions returns the number of live client sessions.
func (s *SMTPServer) Sessions() int { return s.srv.count() }
