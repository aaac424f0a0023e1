package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/mailbroker/broker/broker"
)

func TestLoggerRedactsSecrets(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	const jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sub2ZmaWNlMzY1LmNvbSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
	var buf bytes.Buffer
	log := newLogger(&buf, slog.LevelDebug)
	log.Info("secrets",
		"password", "PW-SECRET-1",
		"client_secret", "CS-SECRET-2",
		"refresh_token", "RT-SECRET-3",
		"Access_Token", "AT-SECRET-4",
		"creds", &broker.Credentials{User: "a@contoso.com", AccessToken: "AT-SECRET-5", RefreshToken: "RT-SECRET-6", Password: "PW-SECRET-7"},
		"issued", broker.IssuedToken{AccessToken: "AT-SECRET-8"},
		"oauth", &oauth2.Token{AccessToken: "AT-SECRET-9"},
		"detail", "upstream said: "+jwt+" was refused",
		"err", errors.New("request failed: Authorization: Bearer AT-SECRET-10-abcdefghijklmnop"),
		slog.Group("app", "secret", "CS-SECRET-11"),
	)
	log.Info("kept",
		"token_expiry", "2026-01-02T03:04:05Z",
		"client_secret_expires", "2026-06-30",
		"client_secret_file", "/etc/broker/contoso.secret",
		"token_type", "Bearer",
		"password", "",
		"account", "support@contoso.com",
		"credential", "client secret",
		"expires", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC),
	)
	out := buf.String()
	for i := 1; i <= 11; i++ {
		for _, p := range []string{"PW", "CS", "RT", "AT"} {
			if s := p + "-SECRET-" + strconv.Itoa(i); strings.Contains(out, s) {
				t.Errorf("the log shows %s:\n%s", s, out)
			}
		}
	}
	if strings.Contains(out, jwt[:40]) {
		t.Errorf("the log shows a JWT:\n%s", out)
	}
	for _, want := range []string{
		"detail=\"upstream said: [redacted] was refused\"",
		"err=\"request failed: Authorization: Bearer [redacted]\"",
		"app.secret=[redacted]",
		"token_expiry=2026-01-02T03:04:05Z",
		"client_secret_expires=2026-06-30",
		"client_secret_file=/etc/broker/contoso.secret",
		"token_type=Bearer",
		"password=\"\"",
		"account=support@contoso.com",
		"credential=\"client secret\"",
		"expires=2026-01-02T00:00:00.000Z",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %s:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "time=") {
		t.Errorf("outside the journal, lines have a time:\n%s", out)
	}
}

func TestLoggerUnderJournal(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "8:12345")
	var buf bytes.Buffer
	log := newLogger(&buf, slog.LevelWarn)
	log.Info("hidden")
	log.Warn("shown", "k", "v")
	if got := buf.String(); got != "level=WARN msg=shown k=v\n" {
		t.Fatalf("got %q, want one warning without time (journald stamps lines)", got)
	}
}
