// Package smtp is the SMTP submission proxy: go-smtp speaks SMTP with local
// clients (AUTH PLAIN and LOGIN with the SASL servers of package proxy), and
// each session relays its transactions command by command to an Upstream,
// opened after AUTH through the login pipeline of package proxy. The
// Upstream of today is the SMTP relay (relay.go), authenticated with
// XOAUTH2; Options.Dialer may choose another kind per account.
//
// go-smtp is imported as gosmtp here, as the package has its protocol's
// name.
package smtp

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
)

const (
	// DefaultMaxConnectionsPerMailbox is Exchange Online's limit of
	// concurrent SMTP connections per mailbox; a fourth gets 432 4.3.2.
	DefaultMaxConnectionsPerMailbox = 3
	// DefaultConnectionWait is how long a session waits for one of its
	// mailbox's upstream connections before the client gets a 4xx.
	DefaultConnectionWait = 30 * time.Second
	// DefaultReadTimeout is how long the client may stay silent: the
	// server timeout of RFC 5321 §4.5.3.2.7.
	DefaultReadTimeout = 5 * time.Minute
	// DefaultDialTimeout bounds connecting to upstream: TCP, STARTTLS
	// or implicit TLS, EHLO.
	DefaultDialTimeout = 15 * time.Second
	// DefaultLoginTimeout bounds a whole login: the Authenticator, the
	// wait for a connection slot, the dial and AUTH XOAUTH2.
	DefaultLoginTimeout = DefaultConnectionWait + 45*time.Second
	// DefaultCommandTimeout bounds upstream's reply to one command
	// (RFC 5321 §4.5.3.2.2–4 give MAIL and RCPT 5 minutes).
	DefaultCommandTimeout = 5 * time.Minute
	// DefaultDataTimeout bounds upstream's reply to the end of DATA
	// (RFC 5321 §4.5.3.2.6: 10 minutes).
	DefaultDataTimeout = 10 * time.Minute
	// DefaultMaxLoginFailures is how many failed AUTHs a connection
	// gets before it is closed.
	DefaultMaxLoginFailures = 3
	// maxLineLength bounds a command line and a line of a message.
	// RFC 5321 §4.5.3.1.6 allows 1000 octets, but generated HTML often
	// has longer lines that upstream takes; go-smtp applies one limit to
	// both, and a command line is held in memory while it is read.
	maxLineLength = 64 << 10
	// DefaultMaxMessageBytes is advertised as SIZE until upstream's
	// own limit is known: Exchange Online's 150 MiB.
	DefaultMaxMessageBytes = 157286400
)

// Options configures an Server. Zero values are documented defaults.
type Options struct {
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
	Auth proxy.Authenticator
	// Logger receives a line per session start and end, per relayed
	// message and per failed login. Nil means slog.Default().
	Logger *slog.Logger
	// Hostname is the name in the greeting and in EHLO to upstream.
	// Default "localhost".
	Hostname string
	// Dialer opens each login's upstream connection, and may choose its
	// kind per account from the Authenticator's proxy.Upstream. Nil: the
	// SMTP relay to Upstream, configured by the Upstream* and *Timeout
	// options, which also learns the extensions advertised to clients.
	Dialer Dialer
	// GraphDialer opens the upstream of accounts whose proxy.Upstream.Via
	// is proxy.ViaGraph. Nil: such logins fail, telling the administrator
	// that no Graph upstream is configured. Graph logins take no mailbox
	// slot here: the Graph upstream bounds its own requests.
	GraphDialer Dialer

	// UnauthenticatedAs lets loopback clients submit without AUTH, as this
	// account. "" (the default) requires AUTH from everyone; clients off
	// loopback always have to AUTH.
	UnauthenticatedAs string
	// MaxConnectionsPerMailbox caps concurrent upstream connections per
	// account: DefaultMaxConnectionsPerMailbox.
	MaxConnectionsPerMailbox int
	// ConnectionWait: DefaultConnectionWait.
	ConnectionWait time.Duration
	// Slots are the per-mailbox upstream slots, shared with the server
	// this one replaces (a reload); their cap is theirs, and
	// MaxConnectionsPerMailbox is then ignored. Nil: the server's own.
	Slots *proxy.Slots
	// ReuseIdleTimeout is how long an SMTP relay connection, still
	// authenticated after its session ended, is kept for the next session
	// of the same mailbox (which then skips connecting, TLS and AUTH):
	// DefaultReuseIdleTimeout. Negative: every session connects anew.
	// A kept connection holds its mailbox's slot. Ignored with Dialer.
	ReuseIdleTimeout time.Duration

	// Limiter caps client connections, shared with the other servers
	// given the same one. Nil: a limiter of this server's own with the
	// default caps (DefaultMaxConnections, DefaultMaxConnectionsPerSource).
	Limiter *proxy.ConnLimiter
	// PreAuthTimeout bounds the time from connecting to a successful AUTH
	// (or, for UnauthenticatedAs, the first MAIL), TLS handshakes
	// included: DefaultPreAuthTimeout. The client then gets 421 4.4.2.
	PreAuthTimeout time.Duration
	// ReadTimeout bounds each command, from the first read after the
	// previous reply until its own reply, however slowly the client
	// trickles it, and each read of message data: DefaultReadTimeout.
	ReadTimeout time.Duration
	// DialTimeout: DefaultDialTimeout.
	DialTimeout time.Duration
	// LoginTimeout: DefaultLoginTimeout.
	LoginTimeout time.Duration
	// CommandTimeout: DefaultCommandTimeout.
	CommandTimeout time.Duration
	// DataTimeout: DefaultDataTimeout.
	DataTimeout time.Duration
	// MaxLoginFailures: DefaultMaxLoginFailures.
	MaxLoginFailures int
	// Observer is told of sessions, logins, upstream connections and
	// messages, for metrics. Nil: none.
	Observer proxy.Observer
}

// Server accepts local SMTP clients and relays their messages upstream,
// command by command, over an XOAUTH2-authenticated connection.
type Server struct {
	proxy.Frontend
	opts     Options
	hostname string
	dialer   Dialer
	// relay is the default Dialer; nil when Options.Dialer is set.
	relay *relay
	// pool keeps relay connections for reuse; nil without relay or
	// when reuse is off.
	pool *pool
	// caps are upstream's extensions as last seen, advertised to clients.
	caps      atomic.Pointer[extensions]
	probeOnce sync.Once

	mu      sync.Mutex
	clients map[*clientConn]struct{}
	closing bool
}

// NewServer returns a server configured by opts, which it copies.
func NewServer(opts *Options) *Server {
	s := &Server{opts: *opts, clients: make(map[*clientConn]struct{})}
	o := &s.opts
	s.hostname = o.Hostname
	if s.hostname == "" {
		s.hostname = "localhost"
	}
	proxy.SetDefault(&o.ReadTimeout, DefaultReadTimeout)
	proxy.SetDefault(&o.CommandTimeout, DefaultCommandTimeout)
	proxy.SetDefault(&o.DataTimeout, DefaultDataTimeout)
	s.Init(&proxy.FrontendOptions{
		Protocol: proxy.SMTP, Logger: o.Logger, Upstream: o.Upstream, UpstreamTLS: o.UpstreamTLS, TLS: o.TLS,
		Auth: o.Auth, Classify: classifyFailure, Handle: s.handle, Refusal: "421 4.7.0 Too many connections",
		Limiter: o.Limiter, Slots: o.Slots, Observer: o.Observer, Stopped: s.closeIdle,
		Limits: proxy.Limits{PreAuthTimeout: o.PreAuthTimeout, MaxConnectionsPerMailbox: o.MaxConnectionsPerMailbox,
			ConnectionWait: o.ConnectionWait, DialTimeout: o.DialTimeout, LoginTimeout: o.LoginTimeout,
			MaxLoginFailures: o.MaxLoginFailures},
		Defaults: proxy.Limits{MaxConnectionsPerMailbox: DefaultMaxConnectionsPerMailbox,
			ConnectionWait: DefaultConnectionWait, DialTimeout: DefaultDialTimeout, LoginTimeout: DefaultLoginTimeout,
			MaxLoginFailures: DefaultMaxLoginFailures},
	})
	s.caps.Store(defaultExtensions)
	s.dialer = o.Dialer
	if s.dialer == nil {
		s.relay = &relay{
			addr:           o.Upstream,
			implicitTLS:    o.UpstreamImplicitTLS,
			tls:            s.UpstreamTLS,
			hostname:       s.hostname,
			dialTimeout:    s.Limits.DialTimeout,
			commandTimeout: o.CommandTimeout,
			dataTimeout:    o.DataTimeout,
			seen:           &s.caps,
			obs:            proxy.ObserverOr(o.Observer),
		}
		s.dialer = s.relay
		if o.ReuseIdleTimeout >= 0 {
			s.pool = newPool(s.relay, cmp.Or(o.ReuseIdleTimeout, DefaultReuseIdleTimeout), s.Logger, s.relay.obs)
		}
	}
	return s
}

// Serve accepts connections on l until Close or Shutdown, then returns
// ErrServerClosed. Connections that l returns as *tls.Conn are implicit TLS.
func (s *Server) Serve(l net.Listener) error {
	if (s.opts.Upstream == "" && s.opts.Dialer == nil) || s.opts.Auth == nil {
		return errors.New("smtp: Options.Upstream and Auth are required")
	}
	if _, ok := s.opts.Auth.(proxy.AccountAuthenticator); s.opts.UnauthenticatedAs != "" && !ok {
		return errors.New("smtp: Options.UnauthenticatedAs needs an Auth that is an AccountAuthenticator")
	}
	if s.relay != nil {
		s.probeOnce.Do(func() { go s.probe() })
	}
	return s.Srv.Serve(l)
}

// probe learns upstream's extensions before the first client needs them.
// It sends no credentials.
func (s *Server) probe() {
	c, _, err := s.relay.dial(s.Srv.Context(), nil)
	if err != nil {
		if s.Srv.Context().Err() == nil {
			s.Logger.Warn("upstream not reachable; advertising default extensions until it is",
				"upstream", s.opts.Upstream, "err", err.Error())
		}
		return
	}
	caps := s.caps.Load()
	s.Logger.Info("upstream reachable", "upstream", s.opts.Upstream, "size", caps.size, "smtputf8", caps.smtpUTF8)
	c.Quit()
}

// errNoGraphUpstream refuses an account set to send through Graph when no
// Graph upstream is configured: the administrator must act.
var errNoGraphUpstream = &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonRefused,
	Err: errors.New("the account sends through Microsoft Graph, but no Graph upstream is configured")}

// loginUpstream takes a slot of up.Account and opens an upstream connection
// with up's credentials, which holds the slot until it ends; or it takes a
// relay connection of the same mailbox that the pool kept, slot and all.
func (s *Server) loginUpstream(ctx context.Context, tc *proxy.Conn, up *proxy.Upstream) (Upstream, error) {
	if up.Via == proxy.ViaGraph {
		if s.opts.GraphDialer == nil {
			return nil, errNoGraphUpstream
		}
		return s.opts.GraphDialer.Dial(ctx, tc, up)
	}
	reused, release, err := s.pool.take(ctx, tc, up, s.Srv.TakeSlotSince)
	if err != nil {
		return nil, err
	}
	if reused != nil {
		return reused, nil
	}
	u, err := s.dial(ctx, tc, up, release)
	if err != nil {
		return nil, err
	}
	return s.pool.wrap(u, up), nil
}

// dial opens an upstream connection with up's credentials, which holds
// the slot that release frees until it ends.
func (s *Server) dial(ctx context.Context, tc *proxy.Conn, up *proxy.Upstream, release func()) (*slotted, error) {
	u, err := s.dialer.Dial(ctx, tc, up)
	if err != nil {
		release()
		return nil, err
	}
	return &slotted{Upstream: u, release: release}, nil
}

// Shutdown stops accepting, lets transactions in progress finish and closes
// idle sessions; when ctx is done it closes the sessions left and returns
// ctx's error. A message cut off this way was never acknowledged. Upstream
// connections kept for reuse get QUIT, which Shutdown does not wait for.
func (s *Server) Shutdown(ctx context.Context) error { return s.Frontend.Shutdown(ctx) }

// Close closes the listeners, every session and every upstream connection
// kept for reuse now.
func (s *Server) Close() error {
	s.pool.close(true)
	return s.Frontend.Close()
}

// Retire tells the server that a reload replaced it: besides
// proxy.Frontend.Retire, it quits the upstream connections kept for reuse,
// without waiting, and keeps none from now on, as they would hold their
// mailboxes' slots with no session left to take them.
func (s *Server) Retire() {
	s.stopReuse()
	s.Frontend.Retire()
}

func (s *Server) stopReuse() {
	s.pool.close(false)
}

// closeIdle, once the server stops accepting, closes the idle sessions
// and marks those to come as closing.
func (s *Server) closeIdle() {
	s.stopReuse()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	for c := range s.clients {
		c.closeWhenIdle()
	}
}

func (s *Server) handle(tc *proxy.Conn) {
	cl := &client{srv: s, tc: tc, log: s.Logger.With("session", tc.ID())}
	conn := &clientConn{Conn: tc.NetConn(), idle: s.opts.ReadTimeout, preAuthExpired: func() {
		s.Srv.CountPreAuthTimeout()
		cl.log.Info("not authenticated in time; closing", "limit", s.Limits.PreAuthTimeout)
	}}
	conn.preAuth.Store(tc.Accepted().Add(s.Limits.PreAuthTimeout).UnixNano())
	conn.lines.Store(true)
	cl.conn = conn
	if a, ok := tc.NetConn().RemoteAddr().(*net.TCPAddr); ok {
		cl.loopback = a.IP.IsLoopback()
	}
	s.mu.Lock()
	s.clients[conn] = struct{}{}
	if s.closing {
		conn.closeWhenIdle()
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.clients, conn)
		s.mu.Unlock()
	}()

	tlsConn, implicitTLS := tc.NetConn().(*tls.Conn)
	cl.log.Info("session start", "remote", tc.NetConn().RemoteAddr().String(), "tls", implicitTLS)
	if implicitTLS {
		// go-smtp would handshake at its greeting with no read deadline: a
		// client that never sends its hello would hold the session.
		ctx, cancel := context.WithDeadline(s.Srv.Context(), tc.Accepted().Add(s.Limits.PreAuthTimeout))
		err := tlsConn.HandshakeContext(ctx)
		cancel()
		if err != nil {
			cl.log.Info("session end", "reason", "tls handshake: "+err.Error())
			return
		}
	}
	srv := s.newGoSMTPServer(cl, implicitTLS)
	// Serve returns once it has handed the connection over; Shutdown
	// waits for that session to end.
	srv.Serve(&oneConnListener{conn: conn})
	srv.Shutdown(context.Background())
	cl.log.Info("session end", "account", cl.account, "messages", cl.messages, "bytes", cl.bytes,
		"duration", time.Since(tc.Accepted()).Round(time.Millisecond))
}

// newGoSMTPServer configures go-smtp for one connection, with the
// extensions upstream had when it was last seen.
func (s *Server) newGoSMTPServer(cl *client, implicitTLS bool) *gosmtp.Server {
	caps := s.caps.Load()
	srv := gosmtp.NewServer(gosmtp.BackendFunc(cl.newSession))
	srv.Domain = s.hostname
	srv.MaxLineLength = maxLineLength
	srv.MaxMessageBytes = caps.size
	srv.EnableSMTPUTF8 = caps.smtpUTF8
	srv.EnableDSN = caps.dsn
	// Local legacy clients log in without TLS; off loopback an operator
	// sets a certificate (config warns otherwise).
	srv.AllowInsecureAuth = true
	if !implicitTLS {
		srv.TLSConfig = s.TLS
	}
	// clientConn applies the read timeouts.
	srv.WriteTimeout = s.opts.ReadTimeout
	srv.ErrorLog = errorLog{cl.log}
	return srv
}

// errorLog takes go-smtp's own messages: connection errors, which are
// routine, and recovered panics, which are not.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l errorLog) Println(v ...any)               { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l errorLog) print(msg string) {
	if strings.Contains(msg, "panic") {
		l.log.Error("session panic", "detail", msg)
		return
	}
	l.log.Debug("smtp: " + msg)
}
