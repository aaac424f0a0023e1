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
	// WarmConnections is the most upstream connections kept connected
	// and greeted, ready for the next logins (proxy.WarmPool; at most
	// proxy.MaxWarmConnections): 0, none, every login dials.
	WarmConnections int
}

// Server accepts local IMAP clients, logs them in upstream and relays
// their sessions.
type Server struct {
	proxy.Frontend
	opts Options
}

// NewServer returns a server configured by opts, which it copies.
func NewServer(opts *Options) *Server {
	s := &Server{opts: *opts}
	o := &s.opts
	s.Init(&proxy.FrontendOptions{
		Protocol: proxy.IMAP, Logger: o.Logger, Upstream: o.Upstream, UpstreamTLS: o.UpstreamTLS, TLS: o.TLS,
		Auth: o.Auth, Classify: classifyFailure, Handle: s.handle, Refusal: "* BYE Too many connections",
		Limiter: o.Limiter, Slots: o.Slots, Observer: o.Observer,
		Greet: greet, GreetBuffer: upstreamReadBuffer, WarmConnections: o.WarmConnections,
		Limits: proxy.Limits{PreAuthTimeout: o.PreAuthTimeout, MaxConnectionsPerMailbox: o.MaxConnectionsPerMailbox,
			ConnectionWait: o.ConnectionWait, DialTimeout: o.DialTimeout, LoginTimeout: o.LoginTimeout,
			MaxLoginFailures: o.MaxLoginFailures},
		Defaults: proxy.Limits{MaxConnectionsPerMailbox: DefaultMaxConnectionsPerMailbox,
			ConnectionWait: DefaultConnectionWait, DialTimeout: DefaultDialTimeout, LoginTimeout: DefaultLoginTimeout,
			MaxLoginFailures: DefaultMaxLoginFailures},
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
	return s.Srv.Serve(l)
}

// Shutdown stops accepting and ends the sessions where their clients lose
// nothing: a logged-in client gets "* BYE" once upstream is between
// responses and no command of the client's waits for its answer (one in
// IDLE included); a client not logged in gets it before its next command.
// It waits for the sessions to end until ctx is done; then it closes the
// sessions left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error { return s.Frontend.Shutdown(ctx) }

func (s *Server) handle(tc *proxy.Conn) {
	sess := newSession(s, tc)
	sess.run()
}
