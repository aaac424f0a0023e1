package proxy

import (
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

	"github.com/emersion/go-smtp"
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
	// smtpMaxLineLength bounds a command line and a line of a message.
	// RFC 5321 §4.5.3.1.6 allows 1000 octets, but generated HTML often
	// has longer lines that upstream takes; go-smtp applies one limit to
	// both, and a command line is held in memory while it is read.
	smtpMaxLineLength = 64 << 10
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

	// Limiter caps client connections, shared with the other servers
	// given the same one. Nil: a limiter of this server's own with the
	// default caps (DefaultMaxConnections, DefaultMaxConnectionsPerSource).
	Limiter *ConnLimiter
	// PreAuthTimeout bounds the time from connecting to a successful AUTH
	// (or, for UnauthenticatedAs, the first MAIL), TLS handshakes
	// included: DefaultPreAuthTimeout. The client then gets 421 4.4.2.
	PreAuthTimeout time.Duration
	// ReadTimeout bounds each command, from the first read after the
	// previous reply until its own reply, however slowly the client
	// trickles it, and each read of message data: DefaultSMTPReadTimeout.
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
	opts        SMTPOptions
	hostname    string
	upstreamTLS *tls.Config
	tls         *tls.Config
	logger      *slog.Logger
	srv         *Server
	pipeline    *LoginPipeline
	// caps are upstream's extensions as last seen, advertised to clients.
	caps      atomic.Pointer[smtpCaps]
	probeOnce sync.Once

	mu      sync.Mutex
	clients map[*smtpConn]struct{}
	closing bool
}

// NewSMTPServer returns a server configured by opts, which it copies.
func NewSMTPServer(opts *SMTPOptions) *SMTPServer {
	s := &SMTPServer{opts: *opts, clients: make(map[*smtpConn]struct{})}
	o := &s.opts
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s.hostname = o.Hostname
	if s.hostname == "" {
		s.hostname = "localhost"
	}
	SetDefault(&o.MaxConnectionsPerMailbox, DefaultSMTPMaxConnectionsPerMailbox)
	SetDefault(&o.ConnectionWait, DefaultSMTPConnectionWait)
	SetDefault(&o.PreAuthTimeout, DefaultPreAuthTimeout)
	SetDefault(&o.ReadTimeout, DefaultSMTPReadTimeout)
	SetDefault(&o.DialTimeout, DefaultSMTPDialTimeout)
	SetDefault(&o.LoginTimeout, DefaultSMTPLoginTimeout)
	SetDefault(&o.CommandTimeout, DefaultSMTPCommandTimeout)
	SetDefault(&o.DataTimeout, DefaultSMTPDataTimeout)
	SetDefault(&o.MaxLoginFailures, DefaultSMTPMaxLoginFailures)
	s.logger = o.Logger.With("proto", string(SMTP))

	s.upstreamTLS = UpstreamTLSConfig(o.UpstreamTLS, o.Upstream)
	s.tls = LocalTLSConfig(o.TLS)
	s.caps.Store(defaultSMTPCaps)
	s.pipeline = &LoginPipeline{Auth: o.Auth, Classify: classifySMTPFailure}
	s.srv = NewServer(&ServerOptions{
		Logger:                   s.logger,
		Handle:                   s.handle,
		Limiter:                  o.Limiter,
		Refusal:                  "421 4.7.0 Too many connections",
		MaxConnectionsPerMailbox: o.MaxConnectionsPerMailbox,
		ConnectionWait:           o.ConnectionWait,
	})
	return s
}

// Serve accepts connections on l until Close or Shutdown, then returns
// ErrServerClosed. Connections that l returns as *tls.Conn are implicit TLS.
func (s *SMTPServer) Serve(l net.Listener) error {
	if s.opts.Upstream == "" || s.opts.Auth == nil {
		return errors.New("proxy: SMTPOptions.Upstream and Auth are required")
	}
	if _, ok := s.opts.Auth.(AccountAuthenticator); s.opts.UnauthenticatedAs != "" && !ok {
		return errors.New("proxy: SMTPOptions.UnauthenticatedAs needs an Auth that is an AccountAuthenticator")
	}
	s.probeOnce.Do(func() { go s.probe() })
	return s.srv.Serve(l)
}

// probe learns upstream's extensions before the first client needs them.
// It sends no credentials.
func (s *SMTPServer) probe() {
	c, _, err := s.dialSMTPUpstream(s.srv.Context(), nil)
	if err != nil {
		if s.srv.Context().Err() == nil {
			s.logger.Warn("upstream not reachable; advertising default extensions until it is",
				"upstream", s.opts.Upstream, "err", err.Error())
		}
		return
	}
	caps := s.caps.Load()
	s.logger.Info("upstream reachable", "upstream", s.opts.Upstream, "size", caps.size, "smtputf8", caps.smtpUTF8)
	c.Quit()
}

// Close closes the listeners and every session now.
func (s *SMTPServer) Close() error { return s.srv.Close() }

// Shutdown stops accepting, lets transactions in progress finish and closes
// idle sessions; when ctx is done it closes the sessions left and returns
// ctx's error. A message cut off this way was never acknowledged.
func (s *SMTPServer) Shutdown(ctx context.Context) error {
	return s.srv.Shutdown(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.closing = true
		for c := range s.clients {
			c.closeWhenIdle()
		}
	})
}

// Sessions returns the number of live client sessions.
func (s *SMTPServer) Sessions() int { return s.srv.Sessions() }

// Stats returns the server's counters.
func (s *SMTPServer) Stats() Stats { return s.srv.Stats() }

// UpstreamConnections returns how many upstream connections account holds.
func (s *SMTPServer) UpstreamConnections(account string) int {
	return s.srv.UpstreamConnections(account)
}

func (s *SMTPServer) handle(tc *Conn) {
	cl := &smtpClient{srv: s, tc: tc, log: s.logger.With("session", tc.ID())}
	conn := &smtpConn{Conn: tc.NetConn(), idle: s.opts.ReadTimeout, preAuthExpired: func() {
		s.srv.CountPreAuthTimeout()
		cl.log.Info("not authenticated in time; closing", "limit", s.opts.PreAuthTimeout)
	}}
	conn.preAuth.Store(tc.Accepted().Add(s.opts.PreAuthTimeout).UnixNano())
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
		ctx, cancel := context.WithDeadline(s.srv.Context(), tc.Accepted().Add(s.opts.PreAuthTimeout))
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
func (s *SMTPServer) newGoSMTPServer(cl *smtpClient, implicitTLS bool) *smtp.Server {
	caps := s.caps.Load()
	srv := smtp.NewServer(smtp.BackendFunc(cl.newSession))
	srv.Domain = s.hostname
	srv.MaxLineLength = smtpMaxLineLength
	srv.MaxMessageBytes = caps.size
	srv.EnableSMTPUTF8 = caps.smtpUTF8
	srv.EnableDSN = caps.dsn
	// Local legacy clients log in without TLS; off loopback an operator
	// sets a certificate (config warns otherwise).
	srv.AllowInsecureAuth = true
	if !implicitTLS {
		srv.TLSConfig = s.tls
	}
	// smtpConn applies the read timeouts.
	srv.WriteTimeout = s.opts.ReadTimeout
	srv.ErrorLog = smtpErrorLog{cl.log}
	return srv
}

// smtpErrorLog takes go-smtp's own messages: connection errors, which are
// routine, and recovered panics, which are not.
type smtpErrorLog struct{ log *slog.Logger }

func (l smtpErrorLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l smtpErrorLog) Println(v ...any)               { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l smtpErrorLog) print(msg string) {
	if strings.Contains(msg, "panic") {
		l.log.Error("session panic", "detail", msg)
		return
	}
	l.log.Debug("smtp: " + msg)
}
