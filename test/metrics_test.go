package test

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mailbroker/broker/test/m365sim"
)

// metricsListeningRE finds the metrics listener in the daemon's log.
var metricsListeningRE = regexp.MustCompile(`msg=listening proto=metrics addr=(\S+)`)

// metricsConfig is the [smtp] listener and a [metrics] section on any free
// loopback port, as smtpSimOptions.Config.
const metricsConfig = `listen = ["127.0.0.1:0"]

[metrics]
listen = "127.0.0.1:0"
`

// metricsAddr returns the address the daemon logged for its metrics.
func metricsAddr(t *testing.T, d *daemon) string {
	t.Helper()
	m := metricsListeningRE.FindStringSubmatch(d.Log())
	if m == nil {
		t.Fatalf("the daemon logged no metrics listener\n%s", d.Log())
	}
	return m[1]
}

// httpGet returns the status and body of http://addr/path.
func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// scrape is one parsed /metrics.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, addr string) scrape {
	t.Helper()
	code, body := httpGet(t, addr, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return families
}

// value returns the value of the series of name with exactly labels (name
// value pairs), and whether it exists. A histogram's value is its count.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		match := true
		for _, lp := range m.GetLabel() {
			found := false
			for i := 0; i < len(labels); i += 2 {
				if labels[i] == lp.GetName() && labels[i+1] == lp.GetValue() {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// get is value for a series that must exist.
func (s scrape) get(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.value(name, labels...)
	if !ok {
		t.Fatalf("no series %s%v in the scrape", name, labels)
	}
	return v
}

// waitMetrics scrapes until cond holds (it returns "" then, else what it
// still waits for), for at most 20 s.
func waitMetrics(t *testing.T, addr string, cond func(s scrape) string) scrape {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := scrapeMetrics(t, addr)
		missing := cond(s)
		if missing == "" {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not show %s within 20s", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMetrics runs the daemon with [metrics] against the simulated
// Microsoft 365: /readyz says 503 while the identity platform fails and no
// account has a token, 200 once one has; the counters of /metrics move with
// real sessions: a login, a failed login, a relayed message, token
// requests.
func TestMetrics(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{
		Config: metricsConfig,
		Entra:  func(e *m365sim.Entra) { e.SetFailure(&m365Unavailable) },
	})
	addr := metricsAddr(t, env.Daemon)

	if code, body := httpGet(t, addr, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d %q, want 200", code, body)
	}
	code, body := httpGet(t, addr, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "no account has a valid token: "+mailbox) {
		t.Fatalf("/readyz while Entra fails: %d %q, want 503 naming %s", code, body, mailbox)
	}
	waitMetrics(t, addr, func(s scrape) string {
		if v, _ := s.value("broker_token_refreshes_total", "outcome", "transient"); v < 1 {
			return "a transient token refresh"
		}
		if v, _ := s.value("broker_account_state", "account", mailbox, "state", "ok"); v != 0 {
			return "the account not ok"
		}
		return ""
	})

	// The platform recovers: the broker's retry gets a token.
	env.Entra.SetFailure(nil)
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body = httpGet(t, addr, "/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz after Entra recovered: %d %q, want 200 within 30s\n%s", code, body, env.Daemon.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	before := scrapeMetrics(t, addr)

	// An IMAP login, a failed one, and a message through SMTP.
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("IMAP login: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}
	bad := dialProxy(t, env.Daemon.IMAPAddr)
	if err := bad.Login(mailbox, strings.Repeat("x", 32)).Wait(); err == nil {
		t.Fatal("IMAP login with a wrong password succeeded")
	}
	bad.Close()
	s := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
	if err := s.SendMail(mailbox, []string{mailbox}, strings.NewReader(smtpMessage("metrics", "metrics@test"))); err != nil {
		t.Fatalf("sending: %v", err)
	}
	s.Quit()
	env.waitMessages(t, 1)

	delta := func(s scrape, name string, labels ...string) float64 {
		b, _ := before.value(name, labels...)
		return s.get(t, name, labels...) - b
	}
	after := waitMetrics(t, addr, func(s scrape) string {
		checks := []struct {
			name   string
			labels []string
			min    float64
		}{
			{"broker_logins_total", []string{"protocol", "imap", "outcome", "ok"}, 1},
			{"broker_logins_total", []string{"protocol", "imap", "outcome", "credentials"}, 1},
			{"broker_logins_total", []string{"protocol", "smtp", "outcome", "ok"}, 1},
			{"broker_smtp_messages_total", []string{"outcome", "relayed"}, 1},
			{"broker_sessions_total", []string{"protocol", "imap"}, 2},
			{"broker_sessions_total", []string{"protocol", "smtp"}, 1},
			{"broker_session_duration_seconds", []string{"protocol", "imap"}, 2},
			{"broker_relayed_bytes_total", []string{"protocol", "imap", "direction", "up"}, 1},
			{"broker_relayed_bytes_total", []string{"protocol", "imap", "direction", "down"}, 1},
			{"broker_relayed_bytes_total", []string{"protocol", "smtp", "direction", "up"}, 500},
			{"broker_upstream_connect_seconds", []string{"protocol", "imap", "outcome", "ok"}, 1},
			{"broker_upstream_auth_seconds", []string{"protocol", "imap", "outcome", "ok"}, 1},
			{"broker_upstream_connect_seconds", []string{"protocol", "smtp", "outcome", "ok"}, 1},
			{"broker_upstream_auth_seconds", []string{"protocol", "smtp", "outcome", "ok"}, 1},
			{"broker_mailbox_slot_wait_seconds", []string{"protocol", "imap"}, 1},
		}
		for _, c := range checks {
			if _, ok := s.value(c.name, c.labels...); !ok {
				return fmt.Sprintf("a series %s%v", c.name, c.labels)
			}
			if d := delta(s, c.name, c.labels...); d < c.min {
				return fmt.Sprintf("%s%v up by %v (by %v so far)", c.name, c.labels, c.min, d)
			}
		}
		for _, proto := range []string{"imap", "smtp"} {
			if v := s.get(t, "broker_sessions_active", "protocol", proto); v != 0 {
				return fmt.Sprintf("no active %s session (%v)", proto, v)
			}
		}
		return ""
	})

	if d := delta(after, "broker_upstream_warm_total", "protocol", "imap", "result", "hit") +
		delta(after, "broker_upstream_warm_total", "protocol", "imap", "result", "miss"); d < 1 {
		t.Errorf("broker_upstream_warm_total{protocol=imap} up by %v, want the IMAP login counted as a hit or a miss", d)
	}
	if v := after.get(t, "broker_token_refreshes_total", "outcome", "ok"); v < 1 {
		t.Errorf("broker_token_refreshes_total{outcome=ok} = %v, want at least 1", v)
	}
	for state, want := range map[string]float64{"ok": 1, "refreshing": 0, "needs-login": 0, "failing": 0} {
		if v := after.get(t, "broker_account_state", "account", mailbox, "state", state); v != want {
			t.Errorf("broker_account_state{state=%q} = %v, want %v", state, v, want)
		}
	}
	if v := after.get(t, "broker_access_token_expiry_seconds", "account", mailbox); v < 60 || v > 24*3600 {
		t.Errorf("broker_access_token_expiry_seconds = %v, want the simulator's token lifetime", v)
	}
	if v := after.get(t, "broker_token_last_refresh_ok", "account", mailbox); v != 1 {
		t.Errorf("broker_token_last_refresh_ok = %v, want 1", v)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "broker_build_info"} {
		if after[name] == nil {
			t.Errorf("no %s in the scrape", name)
		}
	}
	if v := after.get(t, "broker_connections_refused_total", "protocol", "imap", "reason", "max_connections"); v != 0 {
		t.Errorf("broker_connections_refused_total{reason=max_connections} = %v, want 0", v)
	}
	if code, body := httpGet(t, addr, "/nothing"); code != http.StatusNotFound {
		t.Errorf("GET /nothing: %d %q, want 404", code, body)
	}
}

// TestMetricsListenLoopbackOnly: [metrics] listen off loopback is a
// configuration error (exit 78) naming the key.
func TestMetricsListenLoopbackOnly(t *testing.T) {
	dir := t.TempDir()
	for i, addr := range []string{"0.0.0.0:9143", ":9143", "192.0.2.1:9143"} {
		cfg := fmt.Sprintf("state_dir = %q\n[imap]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = %q\n", fmt.Sprintf("%s/s%d", dir, i), addr)
		path := writeFile(t, dir, "broker.toml", []byte(cfg))
		_, stderr, err := runBroker("serve", "-config", path)
		if got := exitCode(err); got != exitConfig || !strings.Contains(stderr, "metrics.listen") || !strings.Contains(stderr, "not a loopback address") {
			t.Fatalf("listen = %q: exit %d, want %d naming metrics.listen; stderr:\n%s", addr, got, exitConfig, stderr)
		}
	}
}
