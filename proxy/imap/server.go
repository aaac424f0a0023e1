// Package imap is the IMAP proxy: it speaks the pre-login part of IMAP4rev1
// (RFC 3501) with local clients itself (CAPABILITY, ID, STARTTLS, LOGIN,
// AUTHENTICATE PLAIN and LOGIN), logs in upstream with XOAUTH2 through the
// login pipeline of package proxy, then splices the two connections.
//
// The package is named after the protocol, as proxy/smtp and proxy/pop3
// are; it does not import go-imap.
package imap

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/mailbroker/broker/proxy"
)

const (
	// DefaultMaxConnectionsPerMailbox caps upstream IMAP sessions per
	// mailbox: Exchange Online allows about 20 and refuses more.
	DefaultMaxConnectionsPerMailbox = 20
	// DefaultConnectionWait is how long a login waits for one of its
	// mailbox's upstream sessions before the client gets NO [UNAVAILABLE].
	DefaultConnectionWait = 30 * time.Second
	// DefaultMaxLoginFailures is how many failed logins a connection
	// gets before it is closed.
	DefaultMaxLoginFailures = 3
)

// Options configures an Server. Zero values are documented defaults.
type Options struct {
	// Upstream is the host:port of the upstream IMAP server, spoken to with
	// implicit TLS. Required.
	Upstream string
	// UpstreamTLS configures the upstream TLS client (RootCAs etc.). Its
	// ServerName defaults to Upstream's host and its MinVersion is at
	// least TLS 1.2. Nil means the defaults.
	UpstreamTLS *tls.Config
	// TLS holds the local certificate and enables STARTTLS. Nil: no
	// STARTTLS. (A listener from tls.NewListener is implicit TLS and needs
	// no TLS here.)
	TLS *tls.Config
	// Auth checks local logins. Required.
	Auth proxy.Authenticator
	// Logger receives one line at the start and one at the end of each
	// session, and failed logins. Nil means slog.Default().
	Logger *slog.Logger

	// Limiter caps client connections, shared with the other servers
	// given the same one. Nil: a limiter of this server's own with the
	// default caps (DefaultMaxConnections, DefaultMaxConnectionsPerSource).
	Limiter *proxy.ConnLimiter
	// PreAuthTimeout bounds the time from connecting to a successful
	// login, TLS handshakes included: DefaultPreAuthTimeout (RFC 3501
	// §5.4 asks for at least 30 minutes of idleness once authenticated;
	// before login a short limit is fair and common).
	PreAuthTimeout time.Duration
	// MaxConnectionsPerMailbox caps concurrent upstream sessions per
	// account: DefaultMaxConnectionsPerMailbox.
	MaxConnectionsPerMailbox int
	// ConnectionWait bounds a login's wait for a free upstream session of
	// its mailbox: DefaultConnectionWait.
	ConnectionWait time.Duration
	// DialTimeout bounds connecting to upstream: DefaultDialTimeout.
	DialTimeout time.Duration
	// LoginTimeout bounds one whole login, not counting the wait for a
	// mailbox's upstream session: DefaultLoginTimeout.
	LoginTimeout time.Duration
	// MaxLoginFailures: DefaultMaxLoginFailures.
	MaxLoginFailures int
	// Slots are the per-mailbox upstream session slots, shared with the
	// server this one replaces (a reload); their cap is theirs, and
	// MaxConnectionsPerMailbox is then ignored. Nil: the server's own.
	Slots *proxy.Slots
	// Observer is told of sessions, logins, upstream connections and
	// relayed bytes, for metrics. Nil: none.
	Observer proxy.Observer
}

// Server accepts local IMAP clients, logs them in upstream and relays
// their sessions.
type Server struct {
	opts        Options
	upstreamTLS *tls.Config
	tls         *tls.Config
	logger      *slog.Logger
	srv         *proxy.Server
	pipeline    *proxy.LoginPipeline
	// drain is cancelled by Shutdown: sessions then end with a BYE at the
	// first point where the client loses nothing.
	drain       context.Context
	cancelDrain context.CancelFunc
}

// NewServer returns a server configured by opts, which it copies.
func NewServer(opts *Options) *Server {
	s := &Server{opts: *opts}
	s.drain, s.cancelDrain = context.WithCancel(context.Background())
	o := &s.opts
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	proxy.SetDefault(&o.PreAuthTimeout, proxy.DefaultPreAuthTimeout)
	proxy.SetDefault(&o.MaxConnectionsPerMailbox, DefaultMaxConnectionsPerMailbox)
	proxy.SetDefault(&o.ConnectionWait, DefaultConnectionWait)
	proxy.SetDefault(&o.DialTimeout, DefaultDialTimeout)
	proxy.SetDefault(&o.LoginTimeout, DefaultLoginTimeout)
	proxy.SetDefault(&o.MaxLoginFailures, DefaultMaxLoginFailures)
	s.logger = o.Logger.With("proto", string(proxy.IMAP))
	s.upstreamTLS = proxy.UpstreamTLSConfig(o.UpstreamTLS, o.Upstream)
	s.tls = proxy.LocalTLSConfig(o.TLS)
	s.pipeline = &proxy.LoginPipeline{Auth: o.Auth, Classify: classifyFailure, Protocol: proxy.IMAP, Observer: o.Observer}
	s.srv = proxy.NewServer(&proxy.ServerOptions{
		Logger:                   s.logger,
		Handle:                   s.handle,
		Limiter:                  o.Limiter,
		Refusal:                  "* BYE Too many connections",
		MaxConnectionsPerMailbox: o.MaxConnectionsPerMailbox,
		ConnectionWait:           o.ConnectionWait,
		Slots:                    o.Slots,
		Protocol:                 proxy.IMAP,
		Observer:                 o.Observer,
	})
	return s
}

// Serve accepts connections on l until Close or Shutdown, then returns
// ErrServerClosed. Connections that l returns as *tls.Conn (tls.NewListener)
// are implicit TLS: no STARTTLS is offered on them.
func (s *Server) Serve(l net.Listener) error {
	if s.opts.Upstream == "" || s.opts.Auth == nil {
		return errors.New("imap: Options.Upstream and Auth are required")
	}
	return s.srv.Serve(l)
}

// Close closes the listeners and every session now.
func (s *Server) Close() error { return s.srv.Close() }

// Shutdown stops accepting and ends the sessions where their clients lose
// nothing: a logged-in client gets "* BYE" once upstream is between
// responses and no command of the client's waits for its answer (one in
// IDLE included); a client not logged in gets it before its next command.
// It waits for the sessions to end until ctx is done; then it closes the
// sessions left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx, s.cancelDrain) }

// Sessions returns the number of live sessions, logged in or not.
func (s *Server) Sessions() int { return s.srv.Sessions() }

// Stats returns the server's counters.
func (s *Server) Stats() proxy.Stats { return s.srv.Stats() }

// UpstreamConnections returns how many upstream sessions account holds.
func (s *Server) UpstreamConnections(account string) int {
	return s.srv.UpstreamConnections(account)
}

func (s *Server) handle(tc *proxy.Conn) {
	sess := newSession(s, tc)
	sess.run()
}
