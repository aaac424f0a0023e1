package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/proxy"
)

// The metrics are documented, one by one, in docs/metrics.md; the alert
// rules of docs/alerts.yml use them. A renamed metric or label breaks
// operators' dashboards: add, do not rename.

const (
	// metricsReadHeaderTimeout and metricsTimeout bound a scrape's request
	// and its whole exchange; metricsReadyTimeout bounds /readyz's look at
	// the store.
	metricsReadHeaderTimeout = 5 * time.Second
	metricsTimeout           = 30 * time.Second
	metricsReadyTimeout      = 2 * time.Second
)

// Histogram buckets, in seconds.
var (
	// upstreamBuckets: Exchange Online answers in tens to hundreds of
	// milliseconds; the dial timeout is 15 s, a whole login's 45 s.
	upstreamBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 30, 45}
	// slotWaitBuckets: most logins get a slot at once; connection_wait is
	// 30 s by default, up to 10 minutes.
	slotWaitBuckets = []float64{.001, .01, .1, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
	// sessionBuckets: SMTP sessions last seconds, IMAP ones up to days.
	sessionBuckets = []float64{1, 5, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 7 * 24 * 3600}
)

// accountStates are the states broker_account_state has a series for.
var accountStates = []broker.State{broker.StateOK, broker.StateRefreshing, broker.StateNeedsLogin, broker.StateFailing}

// metrics is the daemon's Prometheus instrumentation: the proxies' and the
// token manager's Observer, and the registry /metrics serves. The counters
// always count; they are served only when [metrics] listen is set.
type metrics struct {
	reg *prometheus.Registry

	sessionsActive  *prometheus.GaugeVec
	sessionsTotal   *prometheus.CounterVec
	sessionDuration *prometheus.HistogramVec
	logins          *prometheus.CounterVec
	bytes           *prometheus.CounterVec
	upstreamConnect *prometheus.HistogramVec
	upstreamAuth    *prometheus.HistogramVec
	upstreamReused  *prometheus.CounterVec
	upstreamWarm    *prometheus.CounterVec
	messages        *prometheus.CounterVec
	slotWait        *prometheus.HistogramVec
	refused         *prometheus.CounterVec
	tokenRefreshes  *prometheus.CounterVec
}

var (
	_ proxy.Observer  = (*metrics)(nil)
	_ broker.Observer = (*metrics)(nil)
)

// newMetrics registers every metric. protocols are the configured ones:
// their series start at zero, so that rate() and alerts see them before
// the first event.
func newMetrics(protocols []proxy.Protocol) *metrics {
	protoLabel := []string{"protocol"}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		sessionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "broker_sessions_active",
			Help: "Client sessions open now, logged in or not.",
		}, protoLabel),
		sessionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_sessions_total",
			Help: "Client sessions accepted (connections refused at a cap are not sessions).",
		}, protoLabel),
		sessionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "broker_session_duration_seconds",
			Help:    "How long client sessions lasted, from accepting the connection to closing it.",
			Buckets: sessionBuckets,
		}, protoLabel),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_logins_total",
			Help: "Logins through the login pipeline, by outcome: ok, credentials, throttled, account, busy, unavailable.",
		}, []string{"protocol", "outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_relayed_bytes_total",
			Help: "Bytes relayed between logged-in clients and upstream; direction up is client to upstream. IMAP counts at the end of each session, SMTP at the end of each message.",
		}, []string{"protocol", "direction"}),
		upstreamConnect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "broker_upstream_connect_seconds",
			Help:    "Time to connect to upstream for a login (TCP and TLS; for SMTP also EHLO and STARTTLS), by outcome: ok or error.",
			Buckets: upstreamBuckets,
		}, []string{"protocol", "outcome"}),
		upstreamAuth: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "broker_upstream_auth_seconds",
			Help:    "Time to authenticate upstream with XOAUTH2 on a connected session, by outcome: ok or error.",
			Buckets: upstreamBuckets,
		}, []string{"protocol", "outcome"}),
		upstreamReused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_upstream_reused_total",
			Help: "Logins that took an authenticated upstream session kept from an earlier session of the same mailbox, instead of connecting and authenticating (SMTP).",
		}, protoLabel),
		upstreamWarm: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_upstream_warm_total",
			Help: "Logins that asked the warm pool (warm_connections) for a connection ready upstream: result hit (took one, no connect) or miss (connected itself) (IMAP, POP3).",
		}, []string{"protocol", "result"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_smtp_messages_total",
			Help: "SMTP messages (DATA or BDAT) by outcome: relayed, rejected (5xx to the client), failed_temporary (4xx).",
		}, []string{"outcome"}),
		slotWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "broker_mailbox_slot_wait_seconds",
			Help:    "Time logins waited for one of their mailbox's upstream connections (max_connections_per_mailbox), whether they got one or not.",
			Buckets: slotWaitBuckets,
		}, protoLabel),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_connections_refused_total",
			Help: "Connections refused at max_connections or max_connections_per_source, and logins refused after waiting connection_wait at max_connections_per_mailbox.",
		}, []string{"protocol", "reason"}),
		tokenRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "broker_token_refreshes_total",
			Help: "Token requests to the identity platform, by outcome: ok, transient, permanent, needs_login.",
		}, []string{"outcome"}),
	}
	m.reg.MustRegister(
		m.sessionsActive, m.sessionsTotal, m.sessionDuration, m.logins, m.bytes,
		m.upstreamConnect, m.upstreamAuth, m.upstreamReused, m.upstreamWarm, m.messages, m.slotWait, m.refused, m.tokenRefreshes,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "broker_build_info",
			Help:        "Always 1; its labels name the running version of broker and the Go release that built it.",
			ConstLabels: prometheus.Labels{"version": versionString(), "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
	)
	for _, p := range protocols {
		proto := string(p)
		m.sessionsActive.WithLabelValues(proto)
		m.sessionsTotal.WithLabelValues(proto)
		for _, o := range proxy.LoginOutcomes {
			m.logins.WithLabelValues(proto, o)
		}
		m.bytes.WithLabelValues(proto, string(proxy.Up))
		if p != proxy.SMTP {
			// SMTP counts the messages' bytes only.
			m.bytes.WithLabelValues(proto, string(proxy.Down))
		}
		for _, r := range proxy.RefusalReasons {
			m.refused.WithLabelValues(proto, r)
		}
		if p == proxy.SMTP {
			for _, o := range proxy.MessageOutcomes {
				m.messages.WithLabelValues(o)
			}
			m.upstreamReused.WithLabelValues(proto)
		} else {
			m.upstreamWarm.WithLabelValues(proto, "hit")
			m.upstreamWarm.WithLabelValues(proto, "miss")
		}
	}
	for _, o := range broker.RefreshOutcomes {
		m.tokenRefreshes.WithLabelValues(o)
	}
	return m
}

// outcome labels an upstream step.
func outcome(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

func (m *metrics) SessionStarted(p proxy.Protocol) {
	m.sessionsTotal.WithLabelValues(string(p)).Inc()
	m.sessionsActive.WithLabelValues(string(p)).Inc()
}

func (m *metrics) SessionEnded(p proxy.Protocol, d time.Duration) {
	m.sessionsActive.WithLabelValues(string(p)).Dec()
	m.sessionDuration.WithLabelValues(string(p)).Observe(d.Seconds())
}

func (m *metrics) LoginOutcome(p proxy.Protocol, o string) {
	m.logins.WithLabelValues(string(p), o).Inc()
}

func (m *metrics) BytesRelayed(p proxy.Protocol, dir proxy.Direction, n int64) {
	if n > 0 {
		m.bytes.WithLabelValues(string(p), string(dir)).Add(float64(n))
	}
}

func (m *metrics) UpstreamConnect(p proxy.Protocol, d time.Duration, err error) {
	m.upstreamConnect.WithLabelValues(string(p), outcome(err)).Observe(d.Seconds())
}

func (m *metrics) UpstreamAuth(p proxy.Protocol, d time.Duration, err error) {
	m.upstreamAuth.WithLabelValues(string(p), outcome(err)).Observe(d.Seconds())
}

func (m *metrics) UpstreamReused(p proxy.Protocol) { m.upstreamReused.WithLabelValues(string(p)).Inc() }

func (m *metrics) UpstreamWarm(p proxy.Protocol, hit bool) {
	result := "miss"
	if hit {
		result = "hit"
	}
	m.upstreamWarm.WithLabelValues(string(p), result).Inc()
}

func (m *metrics) MessageRelayed(o string) { m.messages.WithLabelValues(o).Inc() }

func (m *metrics) SlotWait(p proxy.Protocol, d time.Duration) {
	m.slotWait.WithLabelValues(string(p)).Observe(d.Seconds())
}

func (m *metrics) ConnRefused(p proxy.Protocol, reason string) {
	m.refused.WithLabelValues(string(p), reason).Inc()
}

func (m *metrics) TokenRefresh(o string) { m.tokenRefreshes.WithLabelValues(o).Inc() }

// accountCollector reports each account's state and expiries at scrape
// time, from the broker's own status: nothing runs between scrapes. It is
// labelled by account (the mailbox): an installation has a handful.
type accountCollector struct {
	statuses func() []broker.Status
	now      func() time.Time

	state, tokenExpiry, credentialExpiry, lastRefreshOK *prometheus.Desc
}

func newAccountCollector(statuses func() []broker.Status) *accountCollector {
	return &accountCollector{
		statuses: statuses,
		now:      time.Now,
		state: prometheus.NewDesc("broker_account_state",
			"1 for the account's current state (ok, refreshing, needs-login, failing), 0 for the others.",
			[]string{"account", "state"}, nil),
		tokenExpiry: prometheus.NewDesc("broker_access_token_expiry_seconds",
			"Seconds until the account's current access token expires; absent while it has none.",
			[]string{"account"}, nil),
		credentialExpiry: prometheus.NewDesc("broker_credential_expiry_seconds",
			"Seconds until a credential the account's tokens depend on expires (kind: client_secret, certificate, password); negative once expired, absent when its expiry is unknown.",
			[]string{"account", "kind"}, nil),
		lastRefreshOK: prometheus.NewDesc("broker_token_last_refresh_ok",
			"1 if the account's last token request succeeded, 0 if it failed; absent before the first.",
			[]string{"account"}, nil),
	}
}

func (c *accountCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.tokenExpiry
	ch <- c.credentialExpiry
	ch <- c.lastRefreshOK
}

func (c *accountCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	for _, s := range c.statuses() {
		for _, st := range accountStates {
			v := 0.0
			if s.State == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, s.Mailbox, string(st))
		}
		if !s.AccessTokenExpires.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.tokenExpiry, prometheus.GaugeValue, s.AccessTokenExpires.Sub(now).Seconds(), s.Mailbox)
		}
		for _, cr := range s.Credentials {
			if !cr.Expires.IsZero() {
				ch <- prometheus.MustNewConstMetric(c.credentialExpiry, prometheus.GaugeValue, cr.Expires.Sub(now).Seconds(), s.Mailbox, cr.Kind)
			}
		}
		if !s.LastRefresh.IsZero() {
			ok := 0.0
			if s.LastRefreshOK {
				ok = 1
			}
			ch <- prometheus.MustNewConstMetric(c.lastRefreshOK, prometheus.GaugeValue, ok, s.Mailbox)
		}
	}
}

// setupMetrics makes the daemon's metrics, which the broker and the proxies
// are then given as their Observer, and, when [metrics] listen is set,
// binds it and adds it to the listeners run serves (logged as
// "listening proto=metrics") and close closes.
func (d *daemon) setupMetrics() error {
	var protocols []proxy.Protocol
	if d.cfg.IMAP != nil {
		protocols = append(protocols, proxy.IMAP)
	}
	if d.cfg.SMTP != nil {
		protocols = append(protocols, proxy.SMTP)
	}
	if d.cfg.POP3 != nil {
		protocols = append(protocols, proxy.POP3)
	}
	d.metrics = newMetrics(protocols)
	d.metrics.reg.MustRegister(newAccountCollector(func() []broker.Status {
		if d.broker == nil {
			return nil
		}
		return d.broker.AccountStatuses()
	}))
	if d.cfg.Metrics.Listen == "" {
		return nil
	}
	l, err := net.Listen("tcp", d.cfg.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics.listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(d.log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       metricsTimeout,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if reason := d.notReady(r.Context()); reason != "" {
			writeText(w, http.StatusServiceUnavailable, reason)
			return
		}
		writeText(w, http.StatusOK, "ready")
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: metricsReadHeaderTimeout,
		ReadTimeout:       metricsTimeout,
		WriteTimeout:      metricsTimeout,
		IdleTimeout:       metricsTimeout,
		ErrorLog:          slog.NewLogLogger(d.log.With("proto", "metrics").Handler(), slog.LevelDebug),
	}
	serve := func(net.Listener) error {
		err := srv.Serve(l)
		if errors.Is(err, http.ErrServerClosed) {
			err = net.ErrClosed
		}
		return err
	}
	d.listeners = append(d.listeners, servedListener{"metrics", &metricsListener{l, srv}, serve})
	return nil
}

// writeText writes a short plain-text answer.
func writeText(w http.ResponseWriter, code int, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintln(w, text)
}

// notReady returns why the daemon cannot serve logins, or "" when it can:
// its store answers, it has a protocol listener (bound before anything is
// served) and at least one account has a valid token.
func (d *daemon) notReady(ctx context.Context) string {
	if d.store == nil || d.broker == nil {
		return "store not open"
	}
	ctx, cancel := context.WithTimeout(ctx, metricsReadyTimeout)
	defer cancel()
	if _, err := d.store.Accounts(ctx); err != nil {
		return "store not readable: " + err.Error()
	}
	bound := false
	for _, sl := range d.listeners {
		bound = bound || sl.proto != "metrics"
	}
	if !bound {
		return "no IMAP or SMTP listener"
	}
	var states []string
	for _, s := range d.broker.AccountStatuses() {
		if s.State == broker.StateOK {
			return ""
		}
		states = append(states, s.Mailbox+" "+string(s.State))
	}
	if len(states) == 0 {
		return "no account configured"
	}
	return "no account has a valid token: " + strings.Join(states, ", ")
}

// metricsListener closes the HTTP server with its listener, so that the
// daemon's close ends the connections of scrapers too. The server serves
// the listener inside, which its Close closes again.
type metricsListener struct {
	net.Listener
	srv *http.Server
}

func (l *metricsListener) Close() error {
	err := l.Listener.Close()
	l.srv.Close()
	return err
}
