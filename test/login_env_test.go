package test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/mailbroker/broker/test/harness"
	"github.com/mailbroker/broker/test/m365sim"
)

// The delegated environment: users of the tenant who sign in with
// `broker login`, and the mailboxes they open.
const (
	agent    = "agent@contoso.com"    // a user signing in for their own mailbox
	queue    = "queue@contoso.com"    // a shared mailbox agent is a delegate of
	presence = "presence@contoso.com" // the presence connector's dedicated user (ROPC)
	scanner  = "scanner@contoso.com"  // an app-only account

	// Client IDs of the app registrations.
	publicClientID  = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
	webClientID     = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
	certClientID    = "2b3c4d5e-6f70-4182-93a4-b5c6d7e8f901"
	appOnlyClientID = "5f4e3d2c-1b0a-4987-8654-3210fedcba98"
)

// loginWait bounds waiting for a CLI's output, a state change or a
// delivery.
const loginWait = 30 * time.Second

// loginApp is an app registration, both as Entra has it and as broker.toml
// names it.
type loginApp struct {
	Name     string
	ClientID string
	// Secret makes the app confidential with a client secret.
	Secret string
	// Certificate makes the app confidential with a certificate credential
	// (registered in Entra, its files named in broker.toml).
	Certificate bool
	// PublicClientFlows is Entra's "Allow public client flows".
	PublicClientFlows bool
	RedirectURIs      []string
	// Roles and Mailboxes are for app-only accounts.
	Roles     []string
	Mailboxes []string
}

// loginAccount is an [[account]] of broker.toml.
type loginAccount struct {
	Mailbox, App, Flow, LoginUser string
}

// loginEnvOptions shape a loginEnv.
type loginEnvOptions struct {
	Apps     []loginApp
	Accounts []loginAccount
	// Users are the tenant's users (UPN → password); each has a mailbox.
	Users map[string]string
	// Delegates map a shared mailbox to the users with FullAccess to it,
	// in Entra and in Dovecot.
	Delegates map[string][]string
	// TokenLifetime is the simulated Entra's access token lifetime; 0 is
	// its default (75 minutes).
	TokenLifetime time.Duration
}

// loginEnv is broker in front of the real Dovecot (IMAP, validating the
// simulated Entra's tokens and whose upn may open which mailbox) and the
// real Postfix (submission, delivering to that Dovecot), with tokens from
// the simulated Entra, which the tests drive as the signing-in user.
type loginEnv struct {
	Entra    *m365sim.Entra
	TenantID string
	Dovecot  *harness.Dovecot
	Postfix  *harness.Postfix
	Daemon   *daemon
	Dir      string
	StateDir string
	Config   string
	// Passwords are app passwords by account mailbox.
	Passwords map[string]string
	// Secrets are everything that must never show in a log, an output or
	// the state directory in clear: client secrets, user passwords, app
	// passwords, authorization codes, refresh and access tokens seen.
	secretsMu sync.Mutex
	secrets   map[string]string // value → what it is
	// outputs are what broker token (standard error only) and broker
	// logout printed, and clis the broker login runs, for the secrets scan.
	outputs []string
	clis    []*cli
}

func newLoginEnv(t *testing.T, o loginEnvOptions) *loginEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{TokenLifetime: o.TokenLifetime})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &loginEnv{Entra: entra, Dir: t.TempDir(), Passwords: map[string]string{}, secrets: map[string]string{}}
	env.StateDir = filepath.Join(env.Dir, "state")
	env.TenantID = entra.AddTenant(tenant)

	mailboxes := map[string]bool{}
	for upn, pw := range o.Users {
		entra.AddUser(tenant, upn, pw)
		env.secret(pw, "password of "+upn)
		mailboxes[upn] = true
	}
	for m, ds := range o.Delegates {
		mailboxes[m] = true
		for _, d := range ds {
			if err := entra.AddDelegate(tenant, m, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, a := range o.Accounts {
		mailboxes[a.Mailbox] = true
	}
	var list []string
	for m := range mailboxes {
		list = append(list, m)
	}

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "state_dir = %q\n", env.StateDir)
	for _, a := range o.Apps {
		reg := m365sim.App{
			Tenant: tenant, ClientID: a.ClientID, Secret: a.Secret,
			PublicClientFlows: a.PublicClientFlows, RedirectURIs: a.RedirectURIs,
			Roles: a.Roles, Mailboxes: a.Mailboxes,
		}
		fmt.Fprintf(&cfg, "\n[[app]]\nname = %q\ntenant = %q\nclient_id = %q\nauthority = %q\n", a.Name, tenant, a.ClientID, entra.URL())
		if a.Secret != "" {
			env.secret(a.Secret, "client secret of "+a.Name)
			fmt.Fprintf(&cfg, "client_secret_file = %q\n", writeFile(t, env.Dir, a.Name+".secret", []byte(a.Secret+"\n")))
		}
		if a.Certificate {
			certPEM, keyPEM, cert, err := m365sim.NewClientCertificate("broker-"+a.Name, time.Now().Add(365*24*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			reg.Certificates = append(reg.Certificates, cert)
			env.secret(string(pemBody(keyPEM)), "private key of "+a.Name)
			fmt.Fprintf(&cfg, "client_certificate_file = %q\nclient_key_file = %q\n",
				writeFile(t, env.Dir, a.Name+".crt", certPEM), writeFile(t, env.Dir, a.Name+".key", keyPEM))
		}
		entra.AddApp(reg)
	}
	for _, a := range o.Accounts {
		fmt.Fprintf(&cfg, "\n[[account]]\nmailbox = %q\napp = %q\nflow = %q\n", a.Mailbox, a.App, a.Flow)
		if a.LoginUser != "" {
			fmt.Fprintf(&cfg, "login_user = %q\n", a.LoginUser)
		}
	}

	env.Dovecot = harness.StartDovecot(t, harness.DovecotOptions{
		KeyID:        entra.KeyID(),
		PublicKeyPEM: entra.PublicKeyPEM(),
		Issuers:      []string{entra.Issuer(env.TenantID)},
		Audience:     "https://outlook.office.com",
		Mailboxes:    list,
		Delegates:    o.Delegates,
	})
	env.Postfix = harness.StartPostfix(t, harness.PostfixOptions{Dovecot: env.Dovecot})
	fmt.Fprintf(&cfg, `
[imap]
listen = ["127.0.0.1:0"]
upstream = %q
upstream_ca_file = %q

[smtp]
listen = ["127.0.0.1:0"]
upstream = %q
upstream_ca_file = %q
`, env.Dovecot.IMAPAddr, env.Dovecot.CAFile, env.Postfix.SubmissionAddr, env.Postfix.CAFile)
	env.Config = cfg.String()
	env.Daemon = startDaemon(t, env.Dir, env.Config)
	for _, a := range o.Accounts {
		_, pw := env.Daemon.addAppPassword(a.Mailbox)
		env.Passwords[a.Mailbox] = pw
		env.secret(pw, "app password of "+a.Mailbox)
	}
	return env
}

// pemBody is the base64 of a PEM block's first line of data: enough to
// recognise the key.
func pemBody(p []byte) []byte {
	lines := bytes.Split(p, []byte("\n"))
	if len(lines) < 2 {
		return p
	}
	return lines[1]
}

// secret records a value that must never show in clear.
func (env *loginEnv) secret(value, what string) {
	if value == "" {
		return
	}
	env.secretsMu.Lock()
	env.secrets[value] = what
	env.secretsMu.Unlock()
}

// restart kills the daemon with SIGKILL and starts it again on the same
// configuration and state directory.
func (env *loginEnv) crashAndRestart(t *testing.T) {
	t.Helper()
	env.Daemon.kill()
	env.Daemon = startDaemon(t, env.Dir, env.Config)
}

// logs returns broker's, Postfix's and Dovecot's logs for failure messages.
func (env *loginEnv) logs() string {
	return "--- broker ---\n" + env.Daemon.Log() + env.Postfix.LogTail() + env.Dovecot.LogTail()
}

// imapLogin logs mailbox in through broker and selects INBOX.
func (env *loginEnv) imapLogin(t *testing.T, mailbox string) *imapclient.Client {
	t.Helper()
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Passwords[mailbox]).Wait(); err != nil {
		t.Fatalf("LOGIN %s through broker: %v\n%s", mailbox, err, env.logs())
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT INBOX of %s through broker: %v\n%s", mailbox, err, env.logs())
	}
	return c
}

// imapRefused logs mailbox in through broker and returns the NO.
func (env *loginEnv) imapRefused(t *testing.T, mailbox string) *imap.Error {
	t.Helper()
	c := dialProxy(t, env.Daemon.IMAPAddr)
	defer c.Close()
	err := c.Login(mailbox, env.Passwords[mailbox]).Wait()
	var e *imap.Error
	if !errors.As(err, &e) {
		t.Fatalf("LOGIN %s through broker: got %v, want a NO\n%s", mailbox, err, env.logs())
	}
	return e
}

// checkNeedsLoginIMAP fails unless an IMAP LOGIN of mailbox gets
// NO [AUTHENTICATIONFAILED] saying that broker login is needed.
func (env *loginEnv) checkNeedsLoginIMAP(t *testing.T, mailbox string) {
	t.Helper()
	e := env.imapRefused(t, mailbox)
	if e.Type != imap.StatusResponseTypeNo || e.Code != imap.ResponseCodeAuthenticationFailed || !strings.Contains(e.Text, "broker login") {
		t.Fatalf("LOGIN %s before it is signed in: got %s [%s] %q, want NO [AUTHENTICATIONFAILED] naming broker login", mailbox, e.Type, e.Code, e.Text)
	}
}

// checkNeedsLoginSMTP fails unless AUTH of mailbox at broker's SMTP gets
// 454 4.7.0 saying that broker login is needed.
func (env *loginEnv) checkNeedsLoginSMTP(t *testing.T, mailbox string) {
	t.Helper()
	c := dialRawSMTP(t, env.Daemon.SMTPAddr)
	c.cmd("EHLO client.test", "250 ")
	got := c.cmd("AUTH PLAIN "+b64("\x00"+mailbox+"\x00"+env.Passwords[mailbox]), "454 4.7.0 ")
	if !strings.Contains(got, "broker login") {
		t.Fatalf("AUTH %s: got %q, want 454 4.7.0 naming broker login", mailbox, got)
	}
}

// sendAndReadBack sends a message as mailbox through broker's SMTP to
// Postfix, which delivers it to Dovecot, and reads it back through
// broker's IMAP.
func (env *loginEnv) sendAndReadBack(t *testing.T, mailbox string) {
	t.Helper()
	w := watchInbox(t, env.Daemon.IMAPAddr, mailbox, env.Passwords[mailbox])
	id := fmt.Sprintf("%d.%s", time.Now().UnixNano(), mailbox)
	msg := "From: <" + mailbox + ">\r\nTo: <" + mailbox + ">\r\nSubject: through broker " + t.Name() +
		"\r\nMessage-ID: <" + id + ">\r\nDate: Mon, 02 Jan 2006 15:04:05 +0000\r\n\r\nhello from " + t.Name() + "\r\n"
	c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Passwords[mailbox])
	if err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader(msg)); err != nil {
		t.Fatalf("sending as %s through broker to Postfix: %v\n%s", mailbox, err, env.logs())
	}
	c.Quit()
	got := w.next(t, env.logs)
	if !strings.HasSuffix(string(got), msg) || !strings.Contains(string(got), "Return-Path: <"+mailbox+">") {
		t.Fatalf("message read back through broker:\n%s\nwant what was sent, from %s, after trace headers:\n%s", got, mailbox, msg)
	}
}

// accountStatus is one object of `broker status -json`, as the README
// documents it.
type accountStatus struct {
	Mailbox            string    `json:"mailbox"`
	Flow               string    `json:"flow"`
	App                string    `json:"app"`
	Identity           string    `json:"identity"`
	State              string    `json:"state"`
	Explanation        string    `json:"explanation"`
	AccessTokenExpires time.Time `json:"access_token_expires"`
	LastRefresh        time.Time `json:"last_refresh"`
	LastRefreshOK      bool      `json:"last_refresh_ok"`
	SignedIn           time.Time `json:"signed_in"`
	RefreshTokenIssued time.Time `json:"refresh_token_issued"`
	Credentials        []struct {
		Kind    string    `json:"kind"`
		Expires time.Time `json:"expires"`
		Warning string    `json:"warning"`
	} `json:"credentials"`
}

// status runs `broker status -json MAILBOX` and returns the account's
// object and the exit status.
func (env *loginEnv) status(t *testing.T, mailbox string) (accountStatus, int) {
	t.Helper()
	out, errOut, err := runBroker("status", "-json", "-config", env.Daemon.config, mailbox)
	code := exitCode(err)
	if code != 0 && code != 3 && code != 4 {
		t.Fatalf("broker status -json %s: %v\n%s", mailbox, err, errOut)
	}
	var list []accountStatus
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].Mailbox != mailbox {
		t.Fatalf("broker status -json %s printed %q (%v): want an array of that one account", mailbox, out, err)
	}
	return list[0], code
}

// waitStatus polls `broker status -json MAILBOX` until ok accepts it.
func (env *loginEnv) waitStatus(t *testing.T, mailbox, what string, ok func(accountStatus, int) bool) accountStatus {
	t.Helper()
	deadline := time.Now().Add(loginWait)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st, code := env.status(t, mailbox)
		if ok(st, code) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker status %s: not %s within %v; last %+v (exit %d)\n%s", mailbox, what, loginWait, st, code, env.Daemon.Log())
		}
		<-tick.C
	}
}

// exitCode is a process's exit status from its error.
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

// token runs `broker token [-scope SCOPE] MAILBOX` and returns the token.
func (env *loginEnv) token(t *testing.T, mailbox, scope string) string {
	t.Helper()
	args := []string{"token", "-config", env.Daemon.config}
	if scope != "" {
		args = append(args, "-scope", scope)
	}
	out, errOut, err := runBroker(append(args, mailbox)...)
	if err != nil {
		t.Fatalf("broker token -scope %q %s: %v\n%s\n%s", scope, mailbox, err, errOut, env.Daemon.Log())
	}
	env.outputs = append(env.outputs, errOut)
	tok := strings.TrimSpace(out)
	env.secret(tok, "access token from broker token")
	return tok
}

// jwtClaim reads a claim of a JWT without checking it.
func jwtClaim(t *testing.T, token, claim string) any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %.20q…", token)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	return claims[claim]
}

// cli is a running broker command whose output the test reads as it
// comes: `broker login` waiting for the administrator.
type cli struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *watchedBuffer // stdout
	errOut *watchedBuffer // stderr
	exited chan struct{}
	err    error
}

// startLogin runs `broker login -config F ARGS...` as a subprocess, in an
// environment without a display (so auth_code defaults to paste mode).
func (env *loginEnv) startLogin(t *testing.T, args ...string) *cli {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c := &cli{out: newWatchedBuffer(), errOut: newWatchedBuffer(), exited: make(chan struct{})}
	c.cmd = exec.CommandContext(ctx, brokerBin, append([]string{"login", "-config", env.Daemon.config}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DISPLAY=") && !strings.HasPrefix(kv, "WAYLAND_DISPLAY=") {
			c.cmd.Env = append(c.cmd.Env, kv)
		}
	}
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.errOut
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		c.err = c.cmd.Wait()
		c.out.close()
		c.errOut.close()
		close(c.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-c.exited
	})
	env.clis = append(env.clis, c)
	return c
}

// send writes a line to the command's standard input.
func (c *cli) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		t.Fatalf("writing to broker login: %v\n%s", err, c.output())
	}
}

// wait waits for the command to exit and returns its exit status.
func (c *cli) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-c.exited:
	case <-time.After(loginWait):
		t.Fatalf("broker login did not exit within %v\n%s", loginWait, c.output())
	}
	return exitCode(c.err)
}

func (c *cli) output() string {
	return "--- stdout ---\n" + c.out.String() + "--- stderr ---\n" + c.errOut.String()
}

// expect waits until stdout (or stderr) matches re and returns the
// submatches.
func (c *cli) expect(t *testing.T, b *watchedBuffer, re *regexp.Regexp) []string {
	t.Helper()
	timeout := time.After(loginWait)
	for {
		text, changed, closed := b.snapshot()
		if m := re.FindStringSubmatch(text); m != nil {
			return m
		}
		if closed {
			t.Fatalf("broker login ended (%v) before printing %q\n%s", c.err, re, c.output())
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("broker login did not print %q within %v\n%s", re, loginWait, c.output())
		}
	}
}

// watchedBuffer is a process's output that tests wait on.
type watchedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
	closed  bool
}

func newWatchedBuffer() *watchedBuffer { return &watchedBuffer{changed: make(chan struct{})} }

func (b *watchedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return len(p), nil
}

func (b *watchedBuffer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *watchedBuffer) snapshot() (string, <-chan struct{}, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.changed, b.closed
}

func (b *watchedBuffer) String() string {
	s, _, _ := b.snapshot()
	return s
}

// Shapes of the simulated Entra's secrets, for the ones no test sees:
// refresh tokens ("0.A" and 48 random bytes), authorization codes ("1.A"
// and 96), and JWTs (access and ID tokens, client assertions).
var secretShapes = map[string]*regexp.Regexp{
	"a refresh token":            regexp.MustCompile(`0\.A[A-Za-z0-9_-]{64}`),
	"an authorization code":      regexp.MustCompile(`1\.A[A-Za-z0-9_-]{128}`),
	"a JWT (token or assertion)": regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.`),
}

// checkSecrets fails if a secret shows in clear in the daemon's log, in
// what broker login and broker token printed (broker token's standard
// output aside: the token is its product), or in any file of the state
// directory, the bbolt database included.
func (env *loginEnv) checkSecrets(t *testing.T) {
	t.Helper()
	places := map[string]string{"the daemon's log": env.Daemon.Log()}
	for i, c := range env.clis {
		places[fmt.Sprintf("broker login #%d's output", i+1)] = c.out.String() + c.errOut.String()
	}
	for i, o := range env.outputs {
		places[fmt.Sprintf("CLI output #%d", i+1)] = o
	}
	entries, err := os.ReadDir(env.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	sawDB := false
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(env.StateDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == "broker.db" {
			sawDB = true
			if !bytes.Contains(data, []byte("signin:")) && !bytes.Contains(data, []byte("@contoso.com")) {
				t.Fatalf("broker.db names no account: the scan below would prove nothing")
			}
		}
		places["state file "+e.Name()] = string(data)
	}
	if !sawDB {
		t.Fatalf("no broker.db in %s", env.StateDir)
	}
	env.secretsMu.Lock()
	defer env.secretsMu.Unlock()
	for place, data := range places {
		for value, what := range env.secrets {
			if strings.Contains(data, value) {
				t.Errorf("%s contains the %s in clear", place, what)
			}
		}
		for what, re := range secretShapes {
			if m := re.FindString(data); m != "" {
				t.Errorf("%s contains %s in clear: %.12s…", place, what, m)
			}
		}
	}
}
