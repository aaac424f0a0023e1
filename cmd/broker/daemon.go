package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/imap"
	"github.com/mailbroker/broker/proxy/pop3"
	"github.com/mailbroker/broker/proxy/smtp"
	"github.com/mailbroker/broker/store"
)

// daemon is one assembled broker: store, token broker, proxies and control
// socket. The goroutine that calls run owns it.
type daemon struct {
	cfg    *config.Config
	log    *slog.Logger
	store  *store.DB
	broker *broker.Broker
	imap   *imap.Server
	smtp   *smtp.Server
	pop3   *pop3.Server
	// limiter caps client connections of every protocol together.
	limiter *proxy.ConnLimiter
	// metrics observe the broker and the proxies (metrics.go).
	metrics *metrics

	// listeners are served by run: the protocol listeners bound at
	// start-up (d.live.bound is the current set of those) and other
	// endpoints.
	listeners []servedListener
	control   net.Listener

	// live is what reloads change while the daemon runs; a daemon a
	// reload builds shares it.
	live *liveState
	// staging is set in a daemon that a reload builds: bind records.
	staging *staging
	status  *statusNotifier
	// logLevel, if set, takes a reloaded configuration's log_level.
	logLevel *slog.LevelVar
}

// liveState is the running daemon's state that reloads change.
type liveState struct {
	// reloadMu serialises reloads, and the start of the drain after them.
	reloadMu sync.Mutex
	stopping bool // under reloadMu

	// mu guards the rest, and the daemon's cfg, imap, smtp and pop3.
	mu sync.Mutex
	// bound are the protocol listeners.
	bound []*boundListener
	// retired are servers that reloads replaced, with sessions left.
	retired []protoServer
	// slots are each protocol's per-mailbox upstream slots, shared by
	// the servers of successive reloads.
	slots map[string]*proxy.Slots

	activation *activation
	// errc takes the accept loops' failures: they end the daemon.
	errc chan error
}

type servedListener struct {
	proto string
	l     net.Listener
	serve func(net.Listener) error
}

// server is what the daemon needs of a protocol's proxy.
type server interface {
	Shutdown(context.Context) error
	Close() error
	Sessions() int
	// Retire: a reload replaced the server (proxy.Frontend.Retire).
	Retire()
}

type protoServer struct {
	proto string
	server
}

// dbFile lives in state_dir, and controlFile too unless the config puts
// the control socket elsewhere (controlSocketPath).
const (
	dbFile      = "broker.db"
	controlFile = "control.sock"
)

// newDaemon opens the state and binds every listener, so that a bad address
// or a locked database fails start-up before anything is served.
func newDaemon(cfg *config.Config, log *slog.Logger, opts broker.Options) (_ *daemon, err error) {
	d := &daemon{cfg: cfg, log: log, status: newStatusNotifier(),
		live: &liveState{activation: takeActivation(log), errc: make(chan error, 16), slots: map[string]*proxy.Slots{}}}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	for _, w := range cfg.Warnings {
		log.Warn("config: " + w)
	}
	if err := d.setupMetrics(); err != nil {
		return nil, err
	}
	if opts.Key == nil {
		if opts.Key, err = broker.LoadKey(cfg.StateDir); err != nil {
			return nil, err
		}
	}
	if d.store, err = store.Open(filepath.Join(cfg.StateDir, dbFile)); err != nil {
		return nil, err
	}
	opts.Logger = log
	opts.Observer = d.metrics
	if d.broker, err = broker.New(cfg, d.store, opts); err != nil {
		return nil, err
	}
	d.limiter = proxy.NewConnLimiter(cfg.Limits.MaxConnections, cfg.Limits.MaxConnectionsPerSource)
	if err := d.setupProxies(cfg); err != nil {
		return nil, err
	}
	d.live.activation.closeUnused()
	if d.control, err = listenControl(controlSocketPath(cfg)); err != nil {
		return nil, err
	}
	return d, nil
}

// setupProxies builds the protocol servers cfg configures and binds their
// listeners (or, in a reload's daemon, records them).
func (d *daemon) setupProxies(cfg *config.Config) error {
	if cfg.IMAP != nil {
		if err := d.setupIMAP(cfg.IMAP); err != nil {
			return err
		}
	}
	if cfg.SMTP != nil {
		if err := d.setupSMTP(cfg.SMTP); err != nil {
			return err
		}
	}
	if cfg.POP3 != nil {
		if err := d.setupPOP3(cfg.POP3); err != nil {
			return err
		}
	}
	return nil
}

// slotsFor returns proto's per-mailbox upstream slots, shared by the
// servers of successive reloads so that the cap counts old sessions too.
// The cap, max (the protocol's default when 0), is applied by applySlots
// in a reload's daemon, once its servers are in use.
func (d *daemon) slotsFor(proto string, max int) *proxy.Slots {
	if max <= 0 {
		max = map[string]int{"imap": imap.DefaultMaxConnectionsPerMailbox, "smtp": smtp.DefaultMaxConnectionsPerMailbox,
			"pop3": pop3.DefaultMaxConnectionsPerMailbox}[proto]
	}
	d.live.mu.Lock()
	defer d.live.mu.Unlock()
	s := d.live.slots[proto]
	if s == nil {
		s = proxy.NewSlots(max)
		d.live.slots[proto] = s
	}
	if d.staging == nil {
		s.SetMax(max)
	}
	return s
}

// applySlots applies the caps per mailbox of a reload's daemon.
func (d *daemon) applySlots() {
	staging := d.staging
	d.staging = nil
	defer func() { d.staging = staging }()
	if d.cfg.IMAP != nil {
		d.slotsFor("imap", d.cfg.IMAP.MaxConnectionsPerMailbox)
	}
	if d.cfg.SMTP != nil {
		d.slotsFor("smtp", d.cfg.SMTP.MaxConnectionsPerMailbox)
	}
	if d.cfg.POP3 != nil {
		d.slotsFor("pop3", d.cfg.POP3.MaxConnectionsPerMailbox)
	}
}

// setupProxy reads the upstream and local TLS settings of proto's
// listener lc, has build make the protocol's server with them, and binds
// the listeners to the Serve that build returns.
func (d *daemon) setupProxy(proto string, lc *config.Listener, build func(upstreamTLS, localTLS *tls.Config) (serve func(net.Listener) error, err error)) error {
	upstreamTLS, err := upstreamTLSConfig(lc)
	if err != nil {
		return err
	}
	localTLS, err := localTLSConfig(lc)
	if err != nil {
		return err
	}
	serve, err := build(upstreamTLS, localTLS)
	if err != nil {
		return err
	}
	return d.bind(proto, lc, localTLS, serve)
}

func (d *daemon) setupIMAP(ic *config.IMAP) error {
	return d.setupProxy("imap", &ic.Listener, func(upstreamTLS, localTLS *tls.Config) (func(net.Listener) error, error) {
		d.imap = imap.NewServer(&imap.Options{
			Upstream:    ic.Upstream,
			UpstreamTLS: upstreamTLS,
			TLS:         localTLS,
			Auth:        d.broker,
			Logger:      d.log,

			Limiter:                  d.limiter,
			PreAuthTimeout:           d.cfg.Limits.PreAuthTimeout,
			MaxConnectionsPerMailbox: ic.MaxConnectionsPerMailbox,
			ConnectionWait:           ic.ConnectionWait,
			Slots:                    d.slotsFor("imap", ic.MaxConnectionsPerMailbox),
			Observer:                 d.metrics,
			WarmConnections:          ic.WarmConnections,
		})
		return d.imap.Serve, nil
	})
}

func (d *daemon) setupSMTP(sc *config.SMTP) error {
	return d.setupProxy("smtp", &sc.Listener, func(upstreamTLS, localTLS *tls.Config) (func(net.Listener) error, error) {
		graphDialer, err := d.graphDialer(sc)
		if err != nil {
			return nil, err
		}
		d.smtp = smtp.NewServer(&smtp.Options{
			GraphDialer:              graphDialer,
			Upstream:                 sc.Upstream,
			UpstreamImplicitTLS:      sc.UpstreamImplicitTLS,
			UpstreamTLS:              upstreamTLS,
			TLS:                      localTLS,
			Auth:                     d.broker,
			Logger:                   d.log,
			Hostname:                 hostname(),
			UnauthenticatedAs:        sc.UnauthenticatedAs,
			MaxConnectionsPerMailbox: sc.MaxConnectionsPerMailbox,
			ConnectionWait:           sc.ConnectionWait,
			Slots:                    d.slotsFor("smtp", sc.MaxConnectionsPerMailbox),
			ReuseIdleTimeout:         reuseIdleTimeout(sc),
			Limiter:                  d.limiter,
			PreAuthTimeout:           d.cfg.Limits.PreAuthTimeout,
			Observer:                 d.metrics,
		})
		return d.smtp.Serve, nil
	})
}

// reuseIdleTimeout is smtp.Options.ReuseIdleTimeout for sc, where 0 means
// no reuse.
func reuseIdleTimeout(sc *config.SMTP) time.Duration {
	if sc.ReuseIdleTimeout == 0 {
		return -1
	}
	return sc.ReuseIdleTimeout
}

// hostname names this machine in the SMTP greeting and in EHLO upstream.
func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// serversLocked are the protocol proxies configured; d.live.mu is held
// (or the daemon is a reload's).
func (d *daemon) serversLocked() []protoServer {
	var ss []protoServer
	if d.imap != nil {
		ss = append(ss, protoServer{"imap", d.imap})
	}
	if d.smtp != nil {
		ss = append(ss, protoServer{"smtp", d.smtp})
	}
	if d.pop3 != nil {
		ss = append(ss, protoServer{"pop3", d.pop3})
	}
	return ss
}

// bind opens a protocol's plain and implicit-TLS listeners, or takes the
// sockets systemd passed for them, and points them at serve. In a reload's
// daemon it only records them.
func (d *daemon) bind(proto string, lc *config.Listener, localTLS *tls.Config, serve func(net.Listener) error) error {
	for _, key := range listenerKeys(proto, lc) {
		if d.staging != nil {
			d.staging.wants = append(d.staging.wants, wantedListener{key: key, tls: localTLS, serve: serve})
			continue
		}
		bl, err := d.openListener(key, localTLS)
		if err != nil {
			return err
		}
		d.live.mu.Lock()
		d.live.bound = append(d.live.bound, bl)
		d.live.mu.Unlock()
		d.listeners = append(d.listeners, servedListener{proto, bl.l, func(net.Listener) error {
			bl.serveWith(serve)
			return bl.acceptLoop(d)
		}})
	}
	return nil
}

// run serves until ctx is done, then drains sessions for up to the
// configured drain_timeout. SIGHUP reloads the configuration.
func (d *daemon) run(ctx context.Context) error {
	d.broker.Start()
	errc := d.live.errc
	for _, sl := range d.listeners {
		d.log.Info("listening", "proto", sl.proto, "addr", sl.l.Addr().String())
		go func() {
			if err := sl.serve(sl.l); err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		}()
	}
	cs := &controlServer{admin: localBroker{d.broker}, stats: d.stats, backup: d.store.Backup, reload: d.reload, log: d.log, uid: os.Getuid()}
	go func() { errc <- cs.serve(d.control) }()
	// Tests and operators wait for this line: every listener is logged
	// above it.
	d.log.Info("ready")
	notifySystemd("READY=1\nSTATUS=" + d.statusLine())

	bg, stopBackground := context.WithCancel(context.Background())
	var background sync.WaitGroup
	background.Go(func() { d.statusLoop(bg) })
	if iv := watchdogInterval(); iv > 0 {
		d.log.Info("watchdog enabled", "ping_every", iv)
		background.Go(func() { d.watchdogLoop(bg, iv) })
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var err error
wait:
	for {
		select {
		case <-hup:
			// Answered in the log; `broker reload` gets the same answer.
			go d.reload()
		case <-ctx.Done():
			break wait
		case err = <-errc:
			if errors.Is(err, net.ErrClosed) {
				err = nil
			}
			break wait
		}
	}
	stopBackground()
	background.Wait()
	notifySystemd("STOPPING=1\nSTATUS=draining sessions")
	d.drain()
	d.close()
	return err
}

// drain stops accepting, then shuts every proxy down at once (those a
// reload replaced too), so that the protocols share the drain budget
// rather than wait for one another: SMTP transactions finish, IMAP
// clients get a BYE where they lose nothing, the rest is closed at
// drain_timeout.
func (d *daemon) drain() {
	d.live.reloadMu.Lock()
	d.live.stopping = true
	d.live.reloadMu.Unlock()
	timeout := d.cfg.Limits.DrainTimeout
	if timeout <= 0 {
		timeout = config.DefaultDrainTimeout
	}
	d.live.mu.Lock()
	for _, bl := range d.live.bound {
		bl.close()
	}
	servers := append(d.serversLocked(), d.live.retired...)
	d.live.mu.Unlock()
	sessions := 0
	for _, s := range servers {
		sessions += s.Sessions()
	}
	d.log.Info("shutting down", "sessions", sessions, "drain_timeout", timeout)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() {
			if err := s.Shutdown(ctx); err != nil {
				d.log.Warn("sessions did not end in time; closed them", "proto", s.proto, "err", err)
			}
		})
	}
	wg.Wait()
	d.log.Info("drained", "duration", time.Since(start).Round(time.Millisecond))
}

// stats collects garbage first, so that heap figures mean live memory; a
// collection is cheap next to how rarely an operator asks.
func (d *daemon) stats() *daemonStats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := &daemonStats{Goroutines: runtime.NumGoroutine(), HeapBytes: ms.HeapAlloc, StackBytes: ms.StackInuse}
	d.live.mu.Lock()
	servers := append(d.serversLocked(), d.live.retired...)
	d.live.mu.Unlock()
	for _, s := range servers {
		n := s.Sessions()
		switch s.proto {
		case "imap":
			st.IMAPSessions += n
		case "smtp":
			st.SMTPSessions += n
		}
		st.Sessions += n
	}
	return st
}

func (d *daemon) close() {
	if d.live != nil {
		d.live.mu.Lock()
		for _, bl := range d.live.bound {
			bl.close()
		}
		servers := append(d.serversLocked(), d.live.retired...)
		d.live.mu.Unlock()
		for _, s := range servers {
			s.Close()
		}
		d.live.activation.closeUnused()
	}
	for _, sl := range d.listeners {
		sl.l.Close()
	}
	if d.control != nil {
		d.control.Close()
		os.Remove(controlSocketPath(d.cfg))
	}
	if d.broker != nil {
		d.broker.Close()
	}
	if d.store != nil {
		d.store.Close()
	}
}

func upstreamTLSConfig(lc *config.Listener) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(lc.Upstream)
	if err != nil {
		return nil, err
	}
	conf := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if lc.UpstreamCAFile == "" {
		return conf, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	pem, err := os.ReadFile(lc.UpstreamCAFile)
	if err != nil {
		return nil, err
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", lc.UpstreamCAFile)
	}
	conf.RootCAs = pool
	return conf, nil
}

func localTLSConfig(lc *config.Listener) (*tls.Config, error) {
	if lc.TLSCertFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(lc.TLSCertFile, lc.TLSKeyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
