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

// drainTimeout bounds how long a stopping daemon waits for sessions.
const drainTimeout = 10 * time.Second

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

	listeners []servedListener
	control   net.Listener
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
	d := &daemon{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	for _, w := range cfg.Warnings {
		log.Warn("config: " + w)
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
	if d.broker, err = broker.New(cfg, d.store, opts); err != nil {
		return nil, err
	}
	d.limiter = proxy.NewConnLimiter(cfg.Limits.MaxConnections, cfg.Limits.MaxConnectionsPerSource)
	if cfg.IMAP != nil {
		if err := d.setupIMAP(cfg.IMAP); err != nil {
			return nil, err
		}
	}
	if cfg.SMTP != nil {
		if err := d.setupSMTP(cfg.SMTP); err != nil {
			return nil, err
		}
	}
	if cfg.POP3 != nil {
		if err := d.setupPOP3(cfg.POP3); err != nil {
			return nil, err
		}
	}
	if d.control, err = listenControl(controlSocketPath(cfg)); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *daemon) setupIMAP(ic *config.IMAP) error {
	lc := &ic.Listener
	upstreamTLS, err := upstreamTLSConfig(lc)
	if err != nil {
		return err
	}
	localTLS, err := localTLSConfig(lc)
	if err != nil {
		return err
	}
	d.imap = imap.NewServer(&imap.Options{
		Upstream:    lc.Upstream,
		UpstreamTLS: upstreamTLS,
		TLS:         localTLS,
		Auth:        d.broker,
		Logger:      d.log,

		Limiter:                  d.limiter,
		PreAuthTimeout:           d.cfg.Limits.PreAuthTimeout,
		MaxConnectionsPerMailbox: ic.MaxConnectionsPerMailbox,
		ConnectionWait:           ic.ConnectionWait,
	})
	return d.bind("imap", lc, localTLS, d.imap.Serve)
}

func (d *daemon) setupSMTP(sc *config.SMTP) error {
	upstreamTLS, err := upstreamTLSConfig(&sc.Listener)
	if err != nil {
		return err
	}
	localTLS, err := localTLSConfig(&sc.Listener)
	if err != nil {
		return err
	}
	graphDialer, err := d.graphDialer(sc)
	if err != nil {
		return err
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
		Limiter:                  d.limiter,
		PreAuthTimeout:           d.cfg.Limits.PreAuthTimeout,
	})
	return d.bind("smtp", &sc.Listener, localTLS, d.smtp.Serve)
}

// hostname names this machine in the SMTP greeting and in EHLO upstream.
func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// servers are the protocol proxies configured.
func (d *daemon) servers() []protoServer {
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

// bind opens a protocol's plain and implicit-TLS listeners.
func (d *daemon) bind(proto string, lc *config.Listener, localTLS *tls.Config, serve func(net.Listener) error) error {
	for _, addr := range lc.Listen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s.listen: %w", proto, err)
		}
		d.listeners = append(d.listeners, servedListener{proto, l, serve})
	}
	for _, addr := range lc.ListenTLS {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s.listen_tls: %w", proto, err)
		}
		d.listeners = append(d.listeners, servedListener{proto, tls.NewListener(l, localTLS), serve})
	}
	return nil
}

// run serves until ctx is done, then drains sessions for up to drainTimeout.
func (d *daemon) run(ctx context.Context) error {
	d.broker.Start()
	errc := make(chan error, len(d.listeners)+1)
	for _, sl := range d.listeners {
		d.log.Info("listening", "proto", sl.proto, "addr", sl.l.Addr().String())
		go func() { errc <- sl.serve(sl.l) }()
	}
	cs := &controlServer{admin: localBroker{d.broker}, stats: d.stats, backup: d.store.Backup, log: d.log, uid: os.Getuid()}
	go func() { errc <- cs.serve(d.control) }()
	// Tests and operators wait for this line: every listener is logged
	// above it.
	d.log.Info("ready")
	notifySystemd("READY=1")

	// SIGHUP would end the process by default; until reload exists, say so.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var err error
wait:
	for {
		select {
		case <-hup:
			d.log.Warn("configuration reload is not supported yet; restart broker to apply changes")
		case <-ctx.Done():
			break wait
		case err = <-errc:
			if errors.Is(err, net.ErrClosed) {
				err = nil
			}
			break wait
		}
	}
	notifySystemd("STOPPING=1")
	d.log.Info("shutting down")
	d.drain()
	d.close()
	return err
}

// drain shuts every proxy down at once, so that the protocols share the
// drain budget rather than wait for one another.
func (d *daemon) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range d.servers() {
		wg.Go(func() {
			if err := s.Shutdown(ctx); err != nil {
				d.log.Warn("sessions did not end in time; closed them", "proto", s.proto, "err", err)
			}
		})
	}
	wg.Wait()
}

// stats collects garbage first, so that heap figures mean live memory; a
// collection is cheap next to how rarely an operator asks.
func (d *daemon) stats() *daemonStats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := &daemonStats{Goroutines: runtime.NumGoroutine(), HeapBytes: ms.HeapAlloc, StackBytes: ms.StackInuse}
	if d.imap != nil {
		st.IMAPSessions = d.imap.Sessions()
	}
	if d.smtp != nil {
		st.SMTPSessions = d.smtp.Sessions()
	}
	st.Sessions = st.IMAPSessions + st.SMTPSessions
	return st
}

func (d *daemon) close() {
	for _, sl := range d.listeners {
		sl.l.Close()
	}
	for _, s := range d.servers() {
		s.Close()
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
