package main

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/proxy"
)

// TestAccountCollector: the per-account gauges are computed at scrape time
// from the accounts' status.
func TestAccountCollector(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newAccountCollector(func() []broker.Status {
		return []broker.Status{
			{Mailbox: "a@contoso.com", State: broker.StateOK, AccessTokenExpires: now.Add(time.Hour),
				LastRefresh: now.Add(-time.Minute), LastRefreshOK: true,
				Credentials: []broker.Credential{
					{Kind: broker.CredentialClientSecret, Expires: now.Add(10 * 24 * time.Hour)},
					{Kind: broker.CredentialCertificate}, // expiry unknown: no series
				}},
			{Mailbox: "b@contoso.com", State: broker.StateNeedsLogin, LastRefresh: now.Add(-time.Minute),
				Credentials: []broker.Credential{{Kind: broker.CredentialPassword, Expires: now.Add(-time.Hour)}}},
		}
	})
	c.now = func() time.Time { return now }
	want := `
# HELP broker_access_token_expiry_seconds Seconds until the account's current access token expires; absent while it has none.
# TYPE broker_access_token_expiry_seconds gauge
broker_access_token_expiry_seconds{account="a@contoso.com"} 3600
# HELP broker_account_state 1 for the account's current state (ok, refreshing, needs-login, failing), 0 for the others.
# TYPE broker_account_state gauge
broker_account_state{account="a@contoso.com",state="failing"} 0
broker_account_state{account="a@contoso.com",state="needs-login"} 0
broker_account_state{account="a@contoso.com",state="ok"} 1
broker_account_state{account="a@contoso.com",state="refreshing"} 0
broker_account_state{account="b@contoso.com",state="failing"} 0
broker_account_state{account="b@contoso.com",state="needs-login"} 1
broker_account_state{account="b@contoso.com",state="ok"} 0
broker_account_state{account="b@contoso.com",state="refreshing"} 0
# HELP broker_credential_expiry_seconds Seconds until a credential the account's tokens depend on expires (kind: client_secret, certificate, password); negative once expired, absent when its expiry is unknown.
# TYPE broker_credential_expiry_seconds gauge
broker_credential_expiry_seconds{account="a@contoso.com",kind="client_secret"} 864000
broker_credential_expiry_seconds{account="b@contoso.com",kind="password"} -3600
# HELP broker_token_last_refresh_ok 1 if the account's last token request succeeded, 0 if it failed; absent before the first.
# TYPE broker_token_last_refresh_ok gauge
broker_token_last_refresh_ok{account="a@contoso.com"} 1
broker_token_last_refresh_ok{account="b@contoso.com"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestMetricsObserver: each Observer event moves its metric, and the
// configured protocols' series exist before any event.
func TestMetricsObserver(t *testing.T) {
	m := newMetrics([]proxy.Protocol{proxy.IMAP, proxy.SMTP})
	if n := testutil.ToFloat64(m.logins.WithLabelValues("imap", proxy.LoginThrottled)); n != 0 {
		t.Fatalf("throttled logins before any: %v", n)
	}
	problems, err := testutil.GatherAndLint(m.reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	m.SessionStarted(proxy.IMAP)
	m.LoginOutcome(proxy.IMAP, proxy.LoginOutcomeOf(&proxy.LoginError{Kind: proxy.KindCredentials, Err: proxy.ErrThrottled}))
	m.LoginOutcome(proxy.SMTP, proxy.LoginOutcomeOf(&proxy.LoginError{Kind: proxy.KindUnavailable, Err: proxy.ErrSlotWait}))
	m.BytesRelayed(proxy.IMAP, proxy.Down, 100)
	m.UpstreamConnect(proxy.IMAP, time.Second, errors.New("refused"))
	m.MessageRelayed(proxy.MessageRejected)
	m.UpstreamReused(proxy.SMTP)
	m.ConnRefused(proxy.SMTP, "max_connections_per_source")
	m.TokenRefresh(broker.RefreshNeedsLogin)
	for _, tt := range []struct {
		got  float64
		want float64
	}{
		{testutil.ToFloat64(m.sessionsActive.WithLabelValues("imap")), 1},
		{testutil.ToFloat64(m.sessionsTotal.WithLabelValues("imap")), 1},
		{testutil.ToFloat64(m.logins.WithLabelValues("imap", "throttled")), 1},
		{testutil.ToFloat64(m.logins.WithLabelValues("smtp", "busy")), 1},
		{testutil.ToFloat64(m.bytes.WithLabelValues("imap", "down")), 100},
		{testutil.ToFloat64(m.messages.WithLabelValues("rejected")), 1},
		{testutil.ToFloat64(m.upstreamReused.WithLabelValues("smtp")), 1},
		{testutil.ToFloat64(m.refused.WithLabelValues("smtp", "max_connections_per_source")), 1},
		{testutil.ToFloat64(m.tokenRefreshes.WithLabelValues("needs_login")), 1},
	} {
		if tt.got != tt.want {
			t.Errorf("got %v, want %v", tt.got, tt.want)
		}
	}
	m.SessionEnded(proxy.IMAP, time.Minute)
	if n := testutil.ToFloat64(m.sessionsActive.WithLabelValues("imap")); n != 0 {
		t.Errorf("active sessions after the end: %v", n)
	}
	if n := testutil.CollectAndCount(m.upstreamConnect); n != 1 {
		t.Errorf("upstream connect series: %d, want 1 (imap, error)", n)
	}
}

// TestMetricsDocumented: every broker_ metric is in docs/metrics.md, and
// every one that docs/alerts.yml uses exists.
func TestMetricsDocumented(t *testing.T) {
	m := newMetrics([]proxy.Protocol{proxy.IMAP, proxy.SMTP, proxy.POP3})
	now := time.Now()
	m.reg.MustRegister(newAccountCollector(func() []broker.Status {
		return []broker.Status{{Mailbox: "a@contoso.com", State: broker.StateOK, AccessTokenExpires: now.Add(time.Hour),
			LastRefresh: now, LastRefreshOK: true,
			Credentials: []broker.Credential{{Kind: broker.CredentialClientSecret, Expires: now.Add(time.Hour)}}}}
	}))
	// Histograms appear once observed.
	m.UpstreamConnect(proxy.IMAP, time.Second, nil)
	m.UpstreamAuth(proxy.IMAP, time.Second, nil)
	m.SlotWait(proxy.IMAP, time.Second)
	m.SessionEnded(proxy.IMAP, time.Second)
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, f := range families {
		registered[f.GetName()] = true
	}
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range registered {
		if strings.HasPrefix(name, "broker_") && !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("%s is not documented in docs/metrics.md", name)
		}
	}
	alerts, err := os.ReadFile("../../docs/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`broker_[a-z_]+`).FindAllString(string(alerts), -1) {
		base := name
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && registered[b] {
				base = b
			}
		}
		if !registered[base] {
			t.Errorf("docs/alerts.yml uses %s, which broker does not export", name)
		}
	}
}
