// Package pop3 is the POP3 proxy: it speaks the AUTHORIZATION state of POP3
// (RFC 1939, with CAPA and response codes of RFC 2449, AUTH of RFC 5034 and
// STLS of RFC 2595) with local clients itself (CAPA, USER and PASS, AUTH
// PLAIN and LOGIN, STLS, QUIT), logs in upstream with AUTH XOAUTH2 through
// the login pipeline of package proxy, then splices the two connections:
// the TRANSACTION and UPDATE states are upstream's, byte for byte.
package pop3

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailbroker/broker/proxy"
)

const (
	// DefaultMaxConnectionsPerMailbox caps upstream POP3 sessions per
	// mailbox. Exchange's own default (Set-PopSettings
	// MaxConnectionsPerUser) is 16; Exchange Online's is not published.
	DefaultMaxConnectionsPerMailbox = 16
	// DefaultConnectionWait is how long a login waits for one of its
	// mailbox's upstream sessions before the client gets -ERR [IN-USE].
	DefaultConnectionWait = 30 * time.Second
	// DefaultMaxLoginFailures is how many failed logins a connection
	// gets before it is closed.
	DefaultMaxLoginFailures = 3
	// DefaultDialTimeout bounds connecting to upstream: TCP and TLS
	// handshake.
	DefaultDialTimeout = 15 * time.Second
	// DefaultLoginTimeout bounds a whole login: the Authenticator, the
	// dial and the upstream SASL exchange.
	DefaultLoginTimeout = 45 * time.Second
)

// Options configures a Server. Zero values are documented defaults.
type Options struct {
	// Upstream is the host:port of the upstream POP3 server, spoken to
	// with implicit TLS (outlook.office365.com:995). Required.
	Upstream string
	// UpstreamTLS configures the upstream TLS client (RootCAs etc.). Its
	// ServerName defaults to Upstream's host and its MinVersion is at
	// least TLS 1.2. Nil means the defaults.
	UpstreamTLS *tls.Config
	// TLS holds the local certificate and enables STLS. Nil: no STLS. (A
	// listener from tls.NewListener is implicit TLS and needs no TLS
	// here.)
	TLS *tls.Config
	// Auth checks local logins. Required.
	Auth proxy.Authenticator
	// Logger receives one line at the start and one at the end of each
	// session, and failed logins. Nil means slog.Default().
	Logger *slog.Logger

	// Limiter caps client connections, shared with the other servers
	// given the same one. Nil: a limiter of this server's own.
	Limiter *proxy.ConnLimiter
	// PreAuthTimeout bounds the time from connecting to a successful
	// login, TLS handshakes included: proxy.DefaultPreAuthTimeout.
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

// Server accepts local POP3 clients, logs them in upstream and relays
// their sessions.
type Server struct {
	proxy.Frontend
	opts Options

	// caps are upstream's capabilities worth advertising before login,
	// as last seen (probe or a session's login); defaultCaps until then.
	caps      atomic.Pointer[[]string]
	probeOnce sync.Once
}

// defaultCaps are Exchange Online's, advertised until upstream is seen.
var defaultCaps = []string{"TOP", "UIDL"}

// relayedCaps are upstream's capabilities (RFC 2449 §6) that describe the
// TRANSACTION state, which is upstream's: the proxy advertises them before
// login as upstream does. Anything about logging in is the proxy's own.
var relayedCaps = map[string]bool{
	"TOP": true, "UIDL": true, "PIPELINING": true, "EXPIRE": true, "LOGIN-DELAY": true,
}

// NewServer returns a server configured by opts, which it copies.
func NewServer(opts *Options) *Server {
	s := &Server{opts: *opts}
	o := &s.opts
	s.Init(&proxy.FrontendOptions{
		Protocol: proxy.POP3, Logger: o.Logger, Upstream: o.Upstream, UpstreamTLS: o.UpstreamTLS, TLS: o.TLS,
		Auth: o.Auth, Classify: classifyFailure, Handle: s.handle, Refusal: "-ERR [SYS/TEMP] Too many connections",
		Limiter: o.Limiter, Slots: o.Slots, Observer: o.Observer,
		Greet: s.greet, GreetBuffer: upstreamReadBuffer, WarmConnections: o.WarmConnections,
		Limits: proxy.Limits{PreAuthTimeout: o.PreAuthTimeout, MaxConnectionsPerMailbox: o.MaxConnectionsPerMailbox,
			ConnectionWait: o.ConnectionWait, DialTimeout: o.DialTimeout, LoginTimeout: o.LoginTimeout,
			MaxLoginFailures: o.MaxLoginFailures},
		Defaults: proxy.Limits{MaxConnectionsPerMailbox: DefaultMaxConnectionsPerMailbox,
			ConnectionWait: DefaultConnectionWait, DialTimeout: DefaultDialTimeout, LoginTimeout: DefaultLoginTimeout,
			MaxLoginFailures: DefaultMaxLoginFailures},
	})
	caps := defaultCaps
	s.caps.Store(&caps)
	return s
}

// Serve accepts connections on l until Close or Shutdown, then returns
// ErrServerClosed. Connections that l returns as *tls.Conn (tls.NewListener)
// are implicit TLS: no STLS is offered on them. The first Serve probes
// upstream, without credentials, for the capabilities to advertise.
func (s *Server) Serve(l net.Listener) error {
	if s.opts.Upstream == "" || s.opts.Auth == nil {
		return errors.New("pop3: Options.Upstream and Auth are required")
	}
	s.probeOnce.Do(func() { go s.probe() })
	return s.Srv.Serve(l)
}

// probe learns upstream's capabilities before the first client asks. It
// sends no credentials: greeting, CAPA, QUIT.
func (s *Server) probe() {
	ctx, cancel := context.WithTimeout(s.Srv.Context(), s.Limits.LoginTimeout)
	defer cancel()
	g, err := s.DialUpstream(ctx)
	if err != nil {
		if s.Srv.Context().Err() == nil {
			s.Logger.Warn("upstream not reachable; advertising default capabilities until it is",
				"upstream", s.opts.Upstream, "err", err.Error())
		}
		return
	}
	defer g.Close()
	s.Logger.Info("upstream reachable", "upstream", s.opts.Upstream, "capa", strings.Join(*s.caps.Load(), " "))
	(&upstreamConn{conn: g.Conn, br: g.Reader}).quit()
}

// Shutdown stops accepting and ends the sessions where their clients lose
// nothing: a logged-in session is closed once every command its client
// sent is answered in full (a RETR under way is finished first), without a
// word; a client not logged in gets "-ERR [SYS/TEMP]" at once, or as the
// answer to the login it is in. It waits for the sessions to end until ctx
// is done; then it closes the sessions left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error { return s.Frontend.Shutdown(ctx) }

// learnCaps keeps what of upstream's CAPA the proxy advertises.
func (s *Server) learnCaps(lines []string) {
	var caps []string
	for _, l := range lines {
		name, _, _ := strings.Cut(l, " ")
		if relayedCaps[strings.ToUpper(name)] && printable(l) && len(l) <= 100 {
			caps = append(caps, l)
		}
	}
	s.caps.Store(&caps)
}

func (s *Server) handle(tc *proxy.Conn) {
	newSession(s, tc).run()
}

// printable reports whether s is printable ASCII.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
