package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

const statusUsage = `usage: broker status [-config FILE] [-json] [MAILBOX]

Shows each account (or MAILBOX's): its flow and identity, its state (ok,
refreshing, needs-login, failing), the access token's expiry, the last
refresh and its outcome, what is wrong and how to fix it, the refresh
token's age, and each credential's expiry. Without a daemon it shows the
tokens as stored. -json prints a JSON array of objects, one per account,
also for a single MAILBOX; the README documents their fields, which are
only ever added to.

Exit status:
  0  every account serves logins and no credential expires within 30 days
  3  a credential (client secret, certificate, password) has expired or
     expires within 30 days
  4  an account cannot serve logins (needs-login, failing); wins over 3
  1  error, 2 usage

flags:
`

// Exit codes of `broker status`.
const (
	exitStatusWarning  = 3
	exitStatusCritical = 4
)

func statusCmd(args []string, stdout, stderr io.Writer) error {
	fs, configPath := newCommand("status", statusUsage, stderr)
	asJSON := fs.Bool("json", false, "print a JSON array")
	mailbox, named, err := optionalMailbox(fs, args)
	if err != nil {
		return err
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	if named {
		acct, err := findAccount(cfg, mailbox)
		if err != nil {
			return err
		}
		mailbox = acct.Mailbox
	}
	admin, ctx, done, err := adminSession(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer done()
	statuses, err := admin.Statuses(ctx, mailbox)
	if err != nil {
		return err
	}
	if *asJSON {
		if err := writeStatusJSON(stdout, statuses); err != nil {
			return err
		}
	} else {
		printStatuses(stdout, statuses, time.Now())
	}
	if code := statusExitCode(statuses); code != 0 {
		return &exitError{code: code}
	}
	return nil
}

// statusExitCode is 4 when an account needs attention, else 3 when a
// credential expires soon, else 0.
func statusExitCode(statuses []broker.Status) int {
	code := 0
	for i := range statuses {
		critical, warning := statuses[i].Attention()
		switch {
		case critical:
			return exitStatusCritical
		case warning:
			code = exitStatusWarning
		}
	}
	return code
}

// writeStatusJSON prints an array, "[]" for no accounts.
func writeStatusJSON(w io.Writer, statuses []broker.Status) error {
	if statuses == nil {
		statuses = []broker.Status{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // advice names admin-center paths with ">"
	return enc.Encode(statuses)
}

func printStatuses(w io.Writer, statuses []broker.Status, now time.Time) {
	if len(statuses) == 0 {
		fmt.Fprintln(w, "No accounts are configured.")
		return
	}
	for i, s := range statuses {
		if i > 0 {
			fmt.Fprintln(w)
		}
		printStatus(w, &s, now)
	}
}

func printStatus(w io.Writer, s *broker.Status, now time.Time) {
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "  %-14s %s\n", label, fmt.Sprintf(format, args...))
	}
	fmt.Fprintln(w, s.Mailbox)
	line("state", "%s", s.State)
	if s.App != "" {
		line("flow", "%s (app %s)", s.Flow, s.App)
	} else if s.Flow != "" {
		line("flow", "%s", s.Flow)
	}
	if s.Identity != "" {
		line("identity", "%s", s.Identity)
	}
	if s.SMTPVia == "graph" {
		line("smtp via", "Microsoft Graph (smtp_via = \"graph\")")
	}
	if s.AccessTokenExpires.IsZero() {
		line("access token", "none valid")
	} else {
		line("access token", "expires %s (%s)", relative(s.AccessTokenExpires, now), stamp(s.AccessTokenExpires))
	}
	if s.LastRefresh.IsZero() {
		line("last refresh", "none recorded")
	} else {
		outcome := "failed"
		if s.LastRefreshOK {
			outcome = "ok"
		}
		line("last refresh", "%s, %s", relative(s.LastRefresh, now), outcome)
	}
	if !s.NextAttempt.IsZero() {
		line("next attempt", "%s", relative(s.NextAttempt, now))
	}
	if !s.SignedIn.IsZero() {
		line("signed in", "%s (%s)", stamp(s.SignedIn), relative(s.SignedIn, now))
	}
	if !s.RefreshTokenIssued.IsZero() {
		line("refresh token", "issued %s", relative(s.RefreshTokenIssued, now))
	}
	if s.Explanation != "" {
		line("problem", "%s", s.Explanation)
	}
	if s.UpstreamRejection != "" {
		line("upstream", "last refused a token: %s", s.UpstreamRejection)
	}
	for _, c := range s.Credentials {
		if c.Expires.IsZero() {
			line(c.Kind, "expiry unknown")
		} else {
			line(c.Kind, "expires %s (%s)", c.Expires.Local().Format(time.DateOnly), relative(c.Expires, now))
		}
		if c.Warning != "" {
			line("", "WARNING: %s", c.Warning)
		}
	}
}

func stamp(t time.Time) string { return t.Local().Format("2006-01-02 15:04") }

// relative says when t is from now: "in 52m", "3h10m ago", "in 41 days".
func relative(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := t.Sub(now)
	if d < 0 {
		return span(-d) + " ago"
	}
	return "in " + span(d)
}

func span(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	default:
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
}
