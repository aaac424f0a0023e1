package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

// doctorEnv is the simulated Microsoft 365 with IMAP and SMTP, a broker
// configuration for it and, unless asked otherwise, a daemon.
type doctorEnv struct {
	Entra  *m365sim.Entra
	IMAP   *m365sim.IMAP
	SMTP   *m365sim.SMTP
	POP3   *m365sim.POP3 // with doctorOptions.POP3
	Config string        // the file
	Daemon *daemon
}

type doctorOptions struct {
	// App changes the app as registered in Entra.
	App func(*m365sim.App)
	// Secret is what broker's secret file holds; "" is the app's secret.
	Secret string
	// IMAPUpstream and IMAPCA replace the simulator's address and
	// certificate in broker's [imap] section.
	IMAPUpstream string
	IMAPCA       []byte
	// Extra is appended to the configuration.
	Extra string
	// POP3 adds the simulated POP3 service, a [pop3] section for it and
	// the app role POP.AccessAsApp (before App runs).
	POP3 bool
	// NoDaemon leaves broker not running: doctor opens the store.
	NoDaemon bool
	// Before runs before the daemon starts.
	Before func(env *doctorEnv)
}

const doctorSecret = "Zx8Q~doctor.secret-value_0123456789abcdefXYZ"

func newDoctorEnv(t *testing.T, o doctorOptions) *doctorEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &doctorEnv{Entra: entra}
	entra.AddTenant(tenant)
	app := m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: doctorSecret,
		Roles: smtpRoles, Mailboxes: []string{mailbox},
	}
	if o.POP3 {
		app.Roles = append(append([]string{}, smtpRoles...), "POP.AccessAsApp")
	}
	if o.App != nil {
		o.App(&app)
	}
	entra.AddApp(app)
	if env.IMAP, err = m365sim.NewIMAP(entra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.IMAP.Close() })
	if err := env.IMAP.AddMailbox(mailbox); err != nil {
		t.Fatal(err)
	}
	if env.SMTP, err = m365sim.NewSMTP(entra, m365sim.SMTPOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.SMTP.Close() })
	dir := t.TempDir()
	imapUpstream, imapCA := env.IMAP.Addr(), env.IMAP.CACertPEM()
	if o.IMAPUpstream != "" {
		imapUpstream = o.IMAPUpstream
	}
	if o.IMAPCA != nil {
		imapCA = o.IMAPCA
	}
	secret := o.Secret
	if secret == "" {
		secret = doctorSecret
	}
	cfg := smtpBrokerConfig(filepath.Join(dir, "state"),
		imapUpstream, writeFile(t, dir, "imap-ca.pem", imapCA),
		env.SMTP.Addr(), writeFile(t, dir, "smtp-ca.pem", env.SMTP.CACertPEM()),
		entra.URL(), writeFile(t, dir, "client.secret", []byte(secret+"\n")), "") + o.Extra
	if o.POP3 {
		if env.POP3, err = m365sim.NewPOP3(entra, env.IMAP, m365sim.POP3Options{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.POP3.Close() })
		cfg += fmt.Sprintf("\n[pop3]\nlisten = [\"127.0.0.1:0\"]\nupstream = %q\nupstream_ca_file = %q\n",
			env.POP3.Addr(), writeFile(t, dir, "pop3-ca.pem", env.POP3.CACertPEM()))
	}
	if o.Before != nil {
		o.Before(env)
	}
	if o.NoDaemon {
		env.Config = writeFile(t, dir, "broker.toml", []byte(cfg))
		return env
	}
	env.Daemon = startDaemon(t, dir, cfg)
	env.Config = env.Daemon.config
	return env
}

// doctorResult is an element of doctor -json's array.
type doctorResult struct {
	Check   string `json:"check"`
	Account string `json:"account"`
	OK      bool   `json:"ok"`
	Skipped bool   `json:"skipped"`
	Warning bool   `json:"warning"`
	Detail  string `json:"detail"`
	Fix     string `json:"fix"`
}

// doctor runs broker doctor -json and returns its results and exit code.
func (env *doctorEnv) doctor(t *testing.T, args ...string) ([]doctorResult, int) {
	t.Helper()
	out, errOut, code := runDoctor(t, append([]string{"-json", "-config", env.Config}, args...)...)
	var rs []doctorResult
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("doctor -json printed no JSON array: %v\n%s\nstderr: %s", err, out, errOut)
	}
	return rs, code
}

// doctorText runs broker doctor and returns what it printed.
func (env *doctorEnv) doctorText(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, _, code := runDoctor(t, append([]string{"-config", env.Config}, args...)...)
	return out, code
}

func runDoctor(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	start := time.Now()
	stdout, stderr, err := runBroker(append([]string{"doctor"}, args...)...)
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("broker doctor: %v\n%s", err, stderr)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("broker doctor took %v", d)
	}
	return stdout, stderr, code
}

// find returns the result of check for account ("" for global checks):
// its failure if one of several failed (config has a line per warning).
func find(t *testing.T, rs []doctorResult, check, account string) doctorResult {
	t.Helper()
	var found []doctorResult
	for _, r := range rs {
		if r.Check == check && r.Account == account {
			found = append(found, r)
		}
	}
	for _, r := range found {
		if !r.OK && !r.Skipped {
			return r
		}
	}
	if len(found) > 0 {
		return found[0]
	}
	t.Fatalf("no %q result for %q in %s", check, account, dumpResults(rs))
	return doctorResult{}
}

func dumpResults(rs []doctorResult) string {
	b, _ := json.MarshalIndent(rs, "", "  ")
	return string(b)
}

// The checks of one account, and of the configuration, network and TLS.
var (
	accountChecks = []string{"token", "permissions", "imap", "smtp"}
	globalChecks  = []string{"config", "daemon", "connect:identity", "connect:imap", "connect:smtp", "tls:imap", "tls:smtp"}
)

func TestDoctorAllGreen(t *testing.T) {
	env := newDoctorEnv(t, doctorOptions{})
	rs, code := env.doctor(t)
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, dumpResults(rs))
	}
	for _, c := range globalChecks {
		if r := find(t, rs, c, ""); !r.OK || r.Warning || r.Skipped {
			t.Errorf("%s: %+v, want a pass", c, r)
		}
	}
	for _, c := range accountChecks {
		if r := find(t, rs, c, mailbox); !r.OK || r.Warning || r.Skipped || r.Fix != "" {
			t.Errorf("%s: %+v, want a pass", c, r)
		}
	}
	if len(rs) != len(globalChecks)+len(accountChecks) {
		t.Errorf("%d results, want %d:\n%s", len(rs), len(globalChecks)+len(accountChecks), dumpResults(rs))
	}
	if n := len(env.SMTP.Messages()); n != 0 {
		t.Errorf("doctor sent %d messages, want none", n)
	}

	text, code := env.doctorText(t, mailbox)
	if code != 0 || !strings.Contains(text, "All checks passed.") || strings.Contains(text, "✗") {
		t.Fatalf("text output, exit %d:\n%s", code, text)
	}
	t.Logf("broker doctor %s:\n%s", mailbox, text)

	// Without a daemon, doctor opens the store and gets a token itself;
	// the daemon not running is a warning, not a failure.
	env.Daemon.stop()
	rs, code = env.doctor(t)
	if code != 0 {
		t.Fatalf("without daemon: exit %d, want 0:\n%s", code, dumpResults(rs))
	}
	if r := find(t, rs, "daemon", ""); !r.OK || !r.Warning || !strings.Contains(r.Fix, "systemctl start broker") {
		t.Errorf("daemon without one running: %+v, want a warning to start it", r)
	}
	for _, c := range accountChecks {
		if r := find(t, rs, c, mailbox); !r.OK {
			t.Errorf("without daemon, %s: %+v, want a pass", c, r)
		}
	}
	text, code = env.doctorText(t)
	if code != 0 || !strings.Contains(text, "! daemon") || !strings.Contains(text, "with 1 warning") {
		t.Fatalf("text output without daemon, exit %d:\n%s", code, text)
	}
}

// wantFailure checks that check failed for account with a detail and a fix
// containing the strings given, and that every later check of the
// account that depends on it was skipped.
type wantFailure struct {
	check, account string
	detail, fix    []string
	skipped        []string
	passed         []string
}

func checkFailure(t *testing.T, rs []doctorResult, code int, w wantFailure) {
	t.Helper()
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	r := find(t, rs, w.check, w.account)
	if r.OK || r.Skipped {
		t.Fatalf("%s: %+v, want a failure\n%s", w.check, r, dumpResults(rs))
	}
	for _, s := range w.detail {
		if !strings.Contains(r.Detail, s) {
			t.Errorf("%s detail %q lacks %q", w.check, r.Detail, s)
		}
	}
	for _, s := range w.fix {
		if !strings.Contains(r.Fix, s) {
			t.Errorf("%s fix %q lacks %q", w.check, r.Fix, s)
		}
	}
	for _, c := range w.skipped {
		acct := w.account
		if strings.Contains(c, ":") {
			acct = ""
		}
		if s := find(t, rs, c, acct); !s.Skipped {
			t.Errorf("%s: %+v, want it skipped after %s failed", c, s, w.check)
		}
	}
	for _, c := range w.passed {
		acct := w.account
		if strings.Contains(c, ":") {
			acct = ""
		}
		if s := find(t, rs, c, acct); !s.OK {
			t.Errorf("%s: %+v, want a pass", c, s)
		}
	}
	for _, r := range rs {
		if strings.Contains(r.Detail+r.Fix, doctorSecret) || strings.Contains(r.Detail+r.Fix, "eyJ") {
			t.Errorf("%s printed a secret or token: %+v", r.Check, r)
		}
	}
}

// TestDoctorFaults stages each fault the simulator can inject and checks
// that doctor names it with the right fix.
func TestDoctorFaults(t *testing.T) {
	tests := []struct {
		name string
		o    doctorOptions
		// after runs once the daemon runs, before doctor.
		after func(env *doctorEnv)
		want  wantFailure
	}{
		{
			name: "bad secret (secret ID pasted instead of its Value)",
			o:    doctorOptions{Secret: "7c1d2e3f-0000-4444-8888-123456789abc"},
			want: wantFailure{
				check: "token", account: mailbox,
				detail:  []string{"AADSTS7000215"},
				fix:     []string{"Certificates & secrets", "Value", "client_secret_file"},
				skipped: []string{"permissions", "imap", "smtp"},
			},
		},
		{
			name: "expired secret",
			o:    doctorOptions{App: func(a *m365sim.App) { a.SecretExpires = time.Now().Add(-time.Hour) }},
			want: wantFailure{
				check: "token", account: mailbox,
				detail:  []string{"AADSTS7000222", "expired"},
				fix:     []string{"Create a new secret", "Certificates & secrets"},
				skipped: []string{"permissions", "imap", "smtp"},
			},
		},
		{
			name: "admin consent missing: no application permissions",
			o:    doctorOptions{App: func(a *m365sim.App) { a.Roles = nil }},
			want: wantFailure{
				check: "permissions", account: mailbox,
				detail:  []string{"IMAP.AccessAsApp", "SMTP.SendAsApp"},
				fix:     []string{"IMAP.AccessAsApp and SMTP.SendAsApp", "Office 365 Exchange Online > Application permissions", "Grant admin consent"},
				skipped: []string{"imap", "smtp"},
				passed:  []string{"token"},
			},
		},
		{
			name: "IMAP.AccessAsApp missing",
			o:    doctorOptions{App: func(a *m365sim.App) { a.Roles = []string{"SMTP.SendAsApp"} }},
			want: wantFailure{
				check: "permissions", account: mailbox,
				detail:  []string{"lacks IMAP.AccessAsApp"},
				fix:     []string{"Add the application permission IMAP.AccessAsApp", "Grant admin consent"},
				skipped: []string{"imap"},
				passed:  []string{"token", "smtp"},
			},
		},
		{
			name: "consent missing for the resource (AADSTS65001)",
			o: doctorOptions{NoDaemon: true, Before: func(env *doctorEnv) {
				env.Entra.SetFailure(&m365sim.Failure{Status: 400, Error: "invalid_grant", Codes: []int{65001},
					Description: "AADSTS65001: The user or administrator has not consented to use the application."})
			}},
			want: wantFailure{
				check: "token", account: mailbox,
				detail:  []string{"AADSTS65001"},
				fix:     []string{"Grant admin consent"},
				skipped: []string{"permissions", "imap", "smtp"},
			},
		},
		{
			name:  "IMAP disabled for the mailbox",
			after: func(env *doctorEnv) { env.IMAP.SetIMAPEnabled(mailbox, false) },
			want: wantFailure{
				check: "imap", account: mailbox,
				detail: []string{"AUTHENTICATE failed."},
				fix:    []string{"IMAP is disabled", "Set-CASMailbox -Identity " + mailbox + " -ImapEnabled $true"},
				passed: []string{"token", "permissions", "smtp"},
			},
		},
		{
			name:  "SMTP AUTH disabled for the mailbox",
			after: func(env *doctorEnv) { env.SMTP.DisableSMTPAuth(mailbox) },
			want: wantFailure{
				check: "smtp", account: mailbox,
				detail: []string{"535 5.7.139"},
				fix:    []string{"Set-CASMailbox -Identity " + mailbox + " -SmtpClientAuthenticationDisabled $false"},
				passed: []string{"token", "permissions", "imap"},
			},
		},
		{
			name: "no FullAccess for the app's service principal",
			o:    doctorOptions{App: func(a *m365sim.App) { a.Mailboxes = nil }},
			want: wantFailure{
				check: "imap", account: mailbox,
				detail: []string{"AUTHENTICATE failed."},
				fix:    []string{"service principal", "New-ServicePrincipal -AppId " + clientID, "Add-MailboxPermission -Identity " + mailbox, "FullAccess"},
				passed: []string{"token", "permissions"},
			},
		},
		{
			name: "IMAP upstream unreachable",
			o:    doctorOptions{IMAPUpstream: closedPort(t)},
			want: wantFailure{
				check:   "connect:imap",
				detail:  []string{"connection refused"},
				fix:     []string{"Allow outbound TCP", "imap.upstream"},
				skipped: []string{"tls:imap"},
				passed:  []string{"connect:smtp", "tls:smtp"},
			},
		},
		{
			name: "IMAP upstream certificate not trusted",
			o:    doctorOptions{IMAPCA: otherCertPEM(t)},
			want: wantFailure{
				check:  "tls:imap",
				detail: []string{"certificate", "unknown authority"},
				fix:    []string{"TLS-inspecting proxy", "imap.upstream_ca_file"},
				passed: []string{"connect:imap", "tls:smtp"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newDoctorEnv(t, tt.o)
			if tt.after != nil {
				tt.after(env)
			}
			rs, code := env.doctor(t)
			checkFailure(t, rs, code, tt.want)
			if t.Failed() {
				t.Logf("results:\n%s", dumpResults(rs))
			}
		})
	}
}

// TestDoctorNoFullAccessSMTP: without FullAccess SMTP fails too, with the
// same fix, and an unreachable or untrusted IMAP upstream skips the
// account's IMAP login.
func TestDoctorSkipsAndCrossChecks(t *testing.T) {
	env := newDoctorEnv(t, doctorOptions{App: func(a *m365sim.App) { a.Mailboxes = nil }})
	rs, _ := env.doctor(t)
	if r := find(t, rs, "smtp", mailbox); r.OK || !strings.Contains(r.Detail, "5.7.3") || !strings.Contains(r.Fix, "FullAccess") {
		t.Errorf("smtp without FullAccess: %+v", r)
	}

	env = newDoctorEnv(t, doctorOptions{IMAPUpstream: closedPort(t), NoDaemon: true})
	rs, _ = env.doctor(t)
	if r := find(t, rs, "imap", mailbox); !r.Skipped {
		t.Errorf("imap with the upstream unreachable: %+v, want skipped", r)
	}
	if r := find(t, rs, "smtp", mailbox); !r.OK {
		t.Errorf("smtp with only IMAP unreachable: %+v, want a pass", r)
	}
}

// TestDoctorRetriesFailingAccount: an account the daemon gave up on for
// now (a permanent error, next attempt in minutes) is retried at once when
// doctor runs after the administrator fixed Entra (issue 8).
func TestDoctorRetriesFailingAccount(t *testing.T) {
	env := newDoctorEnv(t, doctorOptions{Before: func(env *doctorEnv) {
		env.Entra.SetFailure(&m365sim.Failure{Status: 401, Error: "invalid_client", Codes: []int{7000222},
			Description: "AADSTS7000222: The provided client secret keys for app are expired."})
	}})
	env.Daemon.waitLog("AADSTS7000222")
	env.Entra.SetFailure(nil) // the administrator renews the secret
	rs, code := env.doctor(t)
	if code != 0 {
		t.Fatalf("exit %d after the fix, want 0:\n%s", code, dumpResults(rs))
	}
	if out := env.Daemon.cli("status", mailbox); !strings.Contains(out, "state          ok") {
		t.Fatalf("status after doctor:\n%s", out)
	}
}

// TestDoctorDelegatedNeedsLogin: a delegated account that was never signed
// in is told to run broker login, and the other account is still checked.
func TestDoctorDelegatedNeedsLogin(t *testing.T) {
	const agent = "agent@contoso.com"
	env := newDoctorEnv(t, doctorOptions{Extra: `
[[account]]
mailbox = "` + agent + `"
app = "contoso"
flow = "device_code"
`})
	rs, code := env.doctor(t)
	checkFailure(t, rs, code, wantFailure{
		check: "token", account: agent,
		fix:     []string{"Run broker login " + agent},
		skipped: []string{"permissions", "imap", "smtp"},
	})
	for _, c := range accountChecks {
		if r := find(t, rs, c, mailbox); !r.OK {
			t.Errorf("%s of %s: %+v, want a pass", c, mailbox, r)
		}
	}
	// One mailbox only.
	rs, code = env.doctor(t, mailbox)
	if code != 0 {
		t.Fatalf("doctor %s: exit %d:\n%s", mailbox, code, dumpResults(rs))
	}
	for _, r := range rs {
		if r.Account == agent {
			t.Fatalf("doctor %s checked %s too", mailbox, agent)
		}
	}
}

func TestDoctorConfigError(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "broker.toml", []byte("state_dir = 3\n"))
	out, _, code := runDoctor(t, "-config", path)
	if code != 1 || !strings.Contains(out, "✗ config") || !strings.Contains(out, "fix:") || strings.Contains(out, "daemon") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	env := newDoctorEnv(t, doctorOptions{NoDaemon: true})
	rs, code := env.doctor(t, "nobody@contoso.com")
	checkFailure(t, rs, code, wantFailure{check: "config", detail: []string{"nobody@contoso.com"}})
}

// TestDoctorPOP3: with [pop3], doctor checks the POP3 upstream's TCP and
// TLS, the token's POP permission and a POP3 XOAUTH2 login with STAT;
// POP disabled for the mailbox, and the role missing, are explained.
func TestDoctorPOP3(t *testing.T) {
	env := newDoctorEnv(t, doctorOptions{POP3: true})
	rs, code := env.doctor(t)
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, dumpResults(rs))
	}
	for _, c := range append(append([]string{}, globalChecks...), "connect:pop3", "tls:pop3") {
		if r := find(t, rs, c, ""); !r.OK || r.Warning || r.Skipped {
			t.Errorf("%s: %+v, want a pass", c, r)
		}
	}
	for _, c := range append(append([]string{}, accountChecks...), "pop3") {
		if r := find(t, rs, c, mailbox); !r.OK || r.Warning || r.Skipped || r.Fix != "" {
			t.Errorf("%s: %+v, want a pass", c, r)
		}
	}
	if r := find(t, rs, "pop3", mailbox); !strings.Contains(r.Detail, "XOAUTH2 login as "+mailbox) {
		t.Errorf("pop3: %+v", r)
	}
	if r := find(t, rs, "permissions", mailbox); !strings.Contains(r.Detail, "POP.AccessAsApp") {
		t.Errorf("permissions: %+v, want POP.AccessAsApp among the roles", r)
	}
	if r := find(t, rs, "config", ""); !strings.Contains(r.Detail, "[imap], [smtp] and [pop3]") {
		t.Errorf("config: %+v", r)
	}
	if env.POP3.Logins() != 1 {
		t.Errorf("POP3 logins %d, want 1", env.POP3.Logins())
	}

	// POP disabled for the mailbox: IMAP takes the same token, so the fix
	// is Set-CASMailbox.
	env.POP3.SetPOPEnabled(mailbox, false)
	rs, code = env.doctor(t)
	checkFailure(t, rs, code, wantFailure{check: "pop3", account: mailbox,
		detail: []string{"answered AUTH: -ERR Authentication failure"},
		fix:    []string{"POP is disabled for " + mailbox, "Set-CASMailbox -Identity " + mailbox + " -PopEnabled $true"}})
	env.POP3.SetPOPEnabled(mailbox, true)

	// The app without POP.AccessAsApp: permissions fail, the POP3 login
	// is skipped, IMAP and SMTP still pass.
	noRole := newDoctorEnv(t, doctorOptions{POP3: true, App: func(a *m365sim.App) { a.Roles = smtpRoles }})
	rs, code = noRole.doctor(t)
	if code != 1 {
		t.Fatalf("without POP.AccessAsApp: exit %d, want 1:\n%s", code, dumpResults(rs))
	}
	if r := find(t, rs, "permissions", mailbox); r.OK || !strings.Contains(r.Detail, "lacks POP.AccessAsApp") || !strings.Contains(r.Fix, "application permission POP.AccessAsApp") {
		t.Errorf("permissions: %+v", r)
	}
	if r := find(t, rs, "pop3", mailbox); !r.Skipped {
		t.Errorf("pop3: %+v, want skipped", r)
	}
	for _, c := range []string{"imap", "smtp"} {
		if r := find(t, rs, c, mailbox); !r.OK {
			t.Errorf("%s: %+v, want a pass", c, r)
		}
	}
}
