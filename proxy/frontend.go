package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"time"
)

// Limits are the timeouts and caps every protocol server (IMAP, POP3,
// SMTP) has among its options; each protocol has its own defaults, except
// for PreAuthTimeout, which is DefaultPreAuthTimeout for all.
type Limits struct {
	// The options of the same names; the protocol's Options documents them.
	PreAuthTimeout           time.Duration
	MaxConnectionsPerMailbox int
	ConnectionWait           time.Duration
	DialTimeout              time.Duration
	LoginTimeout             time.Duration
	MaxLoginFailures         int
}

// withDefaults returns l with each zero or negative value replaced by
// def's, and PreAuthTimeout by DefaultPreAuthTimeout.
func (l Limits) withDefaults(def Limits) Limits {
	SetDefault(&l.PreAuthTimeout, DefaultPreAuthTimeout)
	SetDefault(&l.MaxConnectionsPerMailbox, def.MaxConnectionsPerMailbox)
	SetDefault(&l.ConnectionWait, def.ConnectionWait)
	SetDefault(&l.DialTimeout, def.DialTimeout)
	SetDefault(&l.LoginTimeout, def.LoginTimeout)
	SetDefault(&l.MaxLoginFailures, def.MaxLoginFailures)
	return l
}

// FrontendOptions are the options a protocol server passes on to its
// Frontend: its own options that every protocol has, and what the protocol
// itself decides.
type FrontendOptions struct {
	// Protocol names the protocol in the log ("proto") and to Observer.
	Protocol Protocol
	// Logger: nil means slog.Default().
	Logger *slog.Logger
	// Upstream is upstream's host:port, the default ServerName of
	// UpstreamTLS.
	Upstream string
	// UpstreamTLS and TLS are the protocol's options, copied by
	// UpstreamTLSConfig and LocalTLSConfig.
	UpstreamTLS *tls.Config
	TLS         *tls.Config
	// Auth and Classify make the login pipeline (LoginPipeline).
	Auth     Authenticator
	Classify func(err error) (le *LoginError, advice string, refusal error)
	// Handle, Refusal, Limiter, Slots and Observer are the Server's
	// (ServerOptions).
	Handle   func(*Conn)
	Refusal  string
	Limiter  *ConnLimiter
	Slots    *Slots
	Observer Observer
	// Limits are the protocol's options; Defaults, the protocol's defaults
	// of those left zero.
	Limits   Limits
	Defaults Limits
	// Stopped, if not nil, is called by Shutdown once the server stops
	// accepting, after Drain is cancelled: it lets the protocol end its
	// idle sessions.
	Stopped func()

	// Greet reads upstream's greeting and capabilities on a new upstream
	// connection (ConnectUpstream). Nil: the protocol dials upstream
	// itself (SMTP).
	Greet func(*Greeted) error
	// GreetBuffer is the size of the upstream reader until login: 0, 4 KiB.
	GreetBuffer int
	// WarmConnections is the most upstream connections kept greeted and
	// ready for logins (WarmPool), at most MaxWarmConnections: 0, none.
	// It needs Greet.
	WarmConnections int
}

// Frontend is what the protocol servers (IMAP, POP3, SMTP) build alike
// from their options: the logger with the protocol's name, the TLS
// configurations, the login pipeline, the Server, the defaulted Limits and
// the drain signal; and the methods they export alike. A protocol server
// embeds it and calls Init from its constructor.
type Frontend struct {
	// Srv is the protocol-independent server.
	Srv *Server
	// Logger has the "proto" attribute.
	Logger *slog.Logger
	// UpstreamTLS is the upstream TLS client configuration; TLS the local
	// one, nil when there is no certificate (no STARTTLS or STLS).
	UpstreamTLS *tls.Config
	TLS         *tls.Config
	// Pipeline is the protocol's half of the login pipeline.
	Pipeline *LoginPipeline
	// Limits are the protocol server's, defaulted.
	Limits Limits
	// Drain is cancelled by Shutdown: sessions then end at the first point
	// where their clients lose nothing.
	Drain       context.Context
	cancelDrain context.CancelFunc
	stopped     func()

	// Warm holds upstream connections ready for logins; nil without
	// FrontendOptions.WarmConnections.
	Warm        *WarmPool
	protocol    Protocol
	upstream    string
	greet       func(*Greeted) error
	greetBuffer int
}

// Init builds f from o.
func (f *Frontend) Init(o *FrontendOptions) {
	f.Drain, f.cancelDrain = context.WithCancel(context.Background())
	f.stopped = o.Stopped
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	f.Limits = o.Limits.withDefaults(o.Defaults)
	f.Logger = logger.With("proto", string(o.Protocol))
	f.UpstreamTLS = UpstreamTLSConfig(o.UpstreamTLS, o.Upstream)
	f.TLS = LocalTLSConfig(o.TLS)
	f.Pipeline = &LoginPipeline{Auth: o.Auth, Classify: o.Classify, Protocol: o.Protocol, Observer: o.Observer}
	f.protocol, f.upstream, f.greet, f.greetBuffer = o.Protocol, o.Upstream, o.Greet, o.GreetBuffer
	f.Srv = NewServer(&ServerOptions{
		Logger:                   f.Logger,
		Handle:                   o.Handle,
		Limiter:                  o.Limiter,
		Refusal:                  o.Refusal,
		MaxConnectionsPerMailbox: f.Limits.MaxConnectionsPerMailbox,
		ConnectionWait:           f.Limits.ConnectionWait,
		Slots:                    o.Slots,
		Protocol:                 o.Protocol,
		Observer:                 o.Observer,
	})
	if o.Greet != nil && o.WarmConnections > 0 {
		f.Warm = NewWarmPool(&WarmOptions{Size: min(o.WarmConnections, MaxWarmConnections), Logger: f.Logger, Dial: f.dialWarm})
	}
}

// DialUpstream connects to upstream with implicit TLS and reads its
// greeting and capabilities (FrontendOptions.Greet), under ctx's deadline,
// which it leaves on the connection.
func (f *Frontend) DialUpstream(ctx context.Context) (*Greeted, error) {
	return DialGreeted(ctx, f.upstream, f.UpstreamTLS, f.Limits.DialTimeout, f.greetBuffer, f.greet)
}

// ConnectUpstream returns a warm upstream connection, or dials one
// (DialUpstream). Call it only once the client's credentials were good:
// taking a warm connection starts a dial to replace it.
func (f *Frontend) ConnectUpstream(ctx context.Context) (*Greeted, error) {
	if f.Warm != nil {
		g := f.Warm.Take()
		f.Srv.Observer().UpstreamWarm(f.protocol, g != nil)
		if g != nil {
			return g, nil
		}
	}
	return f.dialObserved(ctx)
}

// LoginOnUpstream connects to upstream (ConnectUpstream), ties the
// connection to tc's lifetime and runs login on it under ctx's deadline, as
// the upstream authentication Observer is told of. A connection whose
// login failed is closed.
func (f *Frontend) LoginOnUpstream(ctx context.Context, tc *Conn, login func(*Greeted) error) error {
	g, err := f.ConnectUpstream(ctx)
	if err != nil {
		return err
	}
	if !tc.Attach(g.Conn) {
		return net.ErrClosed
	}
	if dl, ok := ctx.Deadline(); ok {
		g.Conn.SetDeadline(dl)
	}
	start := time.Now()
	err = login(g)
	f.Srv.Observer().UpstreamAuth(f.protocol, time.Since(start), err)
	if err != nil {
		g.Close()
		return err
	}
	g.Conn.SetDeadline(time.Time{})
	return nil
}

// dialWarm is the warm pool's dial, bounded as a login's.
func (f *Frontend) dialWarm(ctx context.Context) (*Greeted, error) {
	ctx, cancel := context.WithTimeout(ctx, f.Limits.LoginTimeout)
	defer cancel()
	return f.dialObserved(ctx)
}

// dialObserved dials upstream (DialUpstream), as the upstream connect
// Observer is told of.
func (f *Frontend) dialObserved(ctx context.Context) (*Greeted, error) {
	start := time.Now()
	g, err := f.DialUpstream(ctx)
	f.Srv.Observer().UpstreamConnect(f.protocol, time.Since(start), err)
	return g, err
}

// Close closes the listeners, the warm upstream connections and every
// session now.
func (f *Frontend) Close() error {
	f.Warm.Close()
	return f.Srv.Close()
}

// Retire tells the server that it gets no more connections (a reload
// replaced it): it closes its warm upstream connections. Its sessions go
// on; a login among them dials upstream itself.
func (f *Frontend) Retire() { f.Warm.Close() }

// Shutdown stops accepting, cancels Drain, closes the warm upstream
// connections, calls FrontendOptions.Stopped and waits for the sessions to
// end until ctx is done; then it closes the sessions left and returns ctx's
// error.
func (f *Frontend) Shutdown(ctx context.Context) error {
	return f.Srv.Shutdown(ctx, func() {
		f.cancelDrain()
		f.Warm.Close()
		if f.stopped != nil {
			f.stopped()
		}
	})
}

// Sessions returns the number of live sessions, logged in or not.
func (f *Frontend) Sessions() int { return f.Srv.Sessions() }

// Stats returns the server's counters.
func (f *Frontend) Stats() Stats { return f.Srv.Stats() }

// UpstreamConnections returns how many upstream connections account holds.
func (f *Frontend) UpstreamConnections(account string) int {
	return f.Srv.UpstreamConnections(account)
}
