package main

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

func TestStatusExitCode(t *testing.T) {
	ok := broker.Status{Mailbox: "a", State: broker.StateOK}
	refreshing := broker.Status{Mailbox: "b", State: broker.StateRefreshing}
	expiring := broker.Status{Mailbox: "c", State: broker.StateOK, Credentials: []broker.Credential{{Kind: broker.CredentialClientSecret, Warning: "renew"}}}
	needsLogin := broker.Status{Mailbox: "d", State: broker.StateNeedsLogin}
	failing := broker.Status{Mailbox: "e", State: broker.StateFailing}
	tests := []struct {
		statuses []broker.Status
		want     int
	}{
		{nil, 0},
		{[]broker.Status{ok, refreshing}, 0},
		{[]broker.Status{ok, expiring}, exitStatusWarning},
		{[]broker.Status{expiring, needsLogin}, exitStatusCritical},
		{[]broker.Status{failing, expiring}, exitStatusCritical},
	}
	for i, tt := range tests {
		if got := statusExitCode(tt.statuses); got != tt.want {
			t.Errorf("%d: exit %d, want %d", i, got, tt.want)
		}
	}
	if exitStatusWarning != 3 || exitStatusCritical != 4 {
		t.Fatal("the exit codes of broker status are documented as 3 and 4")
	}
}

// goldenStatusKeys are the JSON keys of `broker status -json`, which
// scripts read: keys may be added, never renamed or removed.
var goldenStatusKeys = []string{
	"access_token_expires", "app", "credentials", "explanation", "flow", "identity",
	"last_refresh", "last_refresh_ok", "mailbox", "next_attempt", "refresh_token_issued",
	"signed_in", "state", "upstream_rejection",
}

var goldenCredentialKeys = []string{"expires", "kind", "warning"}

func fullStatus() broker.Status {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	return broker.Status{
		Mailbox: "shared@contoso.com", Flow: config.FlowDeviceCode, App: "contoso", Identity: "agent@contoso.com",
		State: broker.StateFailing, Explanation: "AADSTS50173: revoked; run broker login",
		AccessTokenExpires: at, LastRefresh: at, LastRefreshOK: false, NextAttempt: at,
		SignedIn: at, RefreshTokenIssued: at,
		Credentials:       []broker.Credential{{Kind: broker.CredentialClientSecret, Expires: at, Warning: "renew"}},
		UpstreamRejection: "AUTHENTICATE failed",
	}
}

func TestStatusJSONShape(t *testing.T) {
	var buf bytes.Buffer
	if err := writeStatusJSON(&buf, []broker.Status{fullStatus()}); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil || len(got) != 1 {
		t.Fatalf("not an array of one object: %v\n%s", err, buf.String())
	}
	for _, k := range goldenStatusKeys {
		if _, ok := got[0][k]; !ok {
			t.Errorf("key %q is gone from status JSON:\n%s", k, buf.String())
		}
	}
	for k := range got[0] {
		if !slices.Contains(goldenStatusKeys, k) {
			t.Errorf("new status key %q: document it in the README and add it to goldenStatusKeys", k)
		}
	}
	cred := got[0]["credentials"].([]any)[0].(map[string]any)
	for _, k := range goldenCredentialKeys {
		if _, ok := cred[k]; !ok {
			t.Errorf("credential key %q is gone:\n%s", k, buf.String())
		}
	}
	if got[0]["access_token_expires"] != "2030-01-02T03:04:05Z" || got[0]["state"] != "failing" {
		t.Errorf("times are RFC 3339 and states their names:\n%s", buf.String())
	}

	buf.Reset()
	writeStatusJSON(&buf, nil)
	if strings.TrimSpace(buf.String()) != "[]" {
		t.Errorf("no accounts: got %q, want []", buf.String())
	}
	// Unset times and empty strings are left out, not zero.
	buf.Reset()
	writeStatusJSON(&buf, []broker.Status{{Mailbox: "a@contoso.com", State: broker.StateNeedsLogin}})
	var min []map[string]any
	json.Unmarshal(buf.Bytes(), &min)
	keys := make([]string, 0, len(min[0]))
	for k := range min[0] {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if strings.Join(keys, " ") != "last_refresh_ok mailbox state" {
		t.Errorf("minimal status has keys %v", keys)
	}
}

func TestPrintStatus(t *testing.T) {
	s := fullStatus()
	now := s.AccessTokenExpires.Add(-52 * time.Minute)
	s.LastRefresh = now.Add(-3 * time.Minute)
	s.Credentials[0].Expires = now.Add(20 * 24 * time.Hour)
	var buf bytes.Buffer
	printStatuses(&buf, []broker.Status{s}, now)
	out := buf.String()
	for _, want := range []string{
		"shared@contoso.com\n", "state          failing", "flow           device_code (app contoso)",
		"identity       agent@contoso.com", "expires in 52m", "3m ago, failed", "AADSTS50173",
		"client_secret  expires", "(in 20 days)", "WARNING: renew", "AUTHENTICATE failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestRelative(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{
		52 * time.Minute:             "in 52m",
		-3 * time.Hour:               "3h ago",
		26*time.Hour + 5*time.Minute: "in 26h5m",
		-90 * 24 * time.Hour:         "90 days ago",
		20 * time.Second:             "in 20s",
	} {
		if got := relative(now.Add(d), now); got != want {
			t.Errorf("relative(%v) = %q, want %q", d, got, want)
		}
	}
	if relative(time.Time{}, now) != "never" {
		t.Error("a zero time is never")
	}
}
