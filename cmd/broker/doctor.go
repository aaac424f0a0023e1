package main

// broker doctor: the checks an administrator runs first when mail stops,
// each a line with what was found and, for a failure, the fix.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/store"
)

const doctorUsage = `usage: broker doctor [-config FILE] [-json] [MAILBOX]

Checks, in order, what broker needs to serve MAILBOX (or every account):
the configuration; the daemon (or, without one, the database); DNS and TCP
to the identity platform and each upstream; the upstreams' TLS (certificate
and version); a token for the account; the token's permissions for IMAP,
SMTP and POP3; an IMAP XOAUTH2 login to the mailbox; SMTP AUTH (no message
is sent); with [pop3], a POP3 XOAUTH2 login and STAT (nothing deleted).
Each check prints a line: ✓ passed, ! passed with a warning, ✗ failed (with
the fix), – skipped because an earlier check failed. With a daemon running,
a failing account is retried at once. Run it as root or as broker's user:
only they may have the account's token. -json prints an array of
{check, account, ok, skipped, warning, detail, fix}.

Exit status: 0 when every check passed (warnings included), 1 when one
failed, 2 usage.

flags:
`

// Time bounds: each network step, a token (the identity platform may be
// slow), and everything done for one account.
const (
	doctorStepTimeout    = 10 * time.Second
	doctorTokenTimeout   = 20 * time.Second
	doctorAccountTimeout = 60 * time.Second
	// doctorCertWarning is how close a certificate's expiry gets a warning.
	doctorCertWarning = 14 * 24 * time.Hour
	// doctorParallel accounts are checked at once.
	doctorParallel = 4
)

// Check names in -json, stable.
const (
	checkConfig      = "config"
	checkDaemon      = "daemon"
	checkConnectID   = "connect:identity"
	checkConnectIMAP = "connect:imap"
	checkConnectSMTP = "connect:smtp"
	checkConnectPOP3 = "connect:pop3"
	checkTLSIMAP     = "tls:imap"
	checkTLSSMTP     = "tls:smtp"
	checkTLSPOP3     = "tls:pop3"
	checkToken       = "token"
	checkPermissions = "permissions"
	checkIMAP        = "imap"
	checkSMTP        = "smtp"
	checkPOP3        = "pop3"
)

var checkLabels = map[string]string{
	checkConfig:      "config",
	checkDaemon:      "daemon",
	checkConnectID:   "identity platform",
	checkConnectIMAP: "IMAP upstream",
	checkConnectSMTP: "SMTP upstream",
	checkConnectPOP3: "POP3 upstream",
	checkTLSIMAP:     "IMAP TLS",
	checkTLSSMTP:     "SMTP TLS",
	checkTLSPOP3:     "POP3 TLS",
	checkToken:       "token",
	checkPermissions: "permissions",
	checkIMAP:        "IMAP login",
	checkSMTP:        "SMTP AUTH",
	checkPOP3:        "POP3 login",
}

// doctorResult is one check's outcome, and an element of -json's array.
type doctorResult struct {
	Check   string `json:"check"`
	Account string `json:"account"` // "" for the checks not about one account
	OK      bool   `json:"ok"`
	Skipped bool   `json:"skipped"`
	// Warning: passed, with something to act on soon (OK is true).
	Warning bool   `json:"warning"`
	Detail  string `json:"detail"`
	Fix     string `json:"fix"`
}

func (r *doctorResult) failed() bool { return !r.OK && !r.Skipped }

func pass(check, detail string) doctorResult {
	return doctorResult{Check: check, OK: true, Detail: detail}
}

func warn(check, detail, fix string) doctorResult {
	return doctorResult{Check: check, OK: true, Warning: true, Detail: detail, Fix: fix}
}

func fail(check, detail, fix string) doctorResult {
	return doctorResult{Check: check, Detail: detail, Fix: fix}
}

func skip(check, why string) doctorResult {
	return doctorResult{Check: check, Skipped: true, Detail: why}
}

func doctorCmd(args []string, stdout, stderr io.Writer) error {
	fs, configPath := newCommand("doctor", doctorUsage, stderr)
	asJSON := fs.Bool("json", false, "print a JSON array")
	mailbox, _, err := optionalMailbox(fs, args)
	if err != nil {
		return err
	}
	var out doctorOutput = &textOutput{w: stdout}
	if *asJSON {
		out = &jsonOutput{w: stdout}
	}
	d := &doctor{configPath: *configPath, out: out}
	d.run(context.Background(), mailbox)
	if err := out.finish(); err != nil {
		return err
	}
	if d.failures > 0 {
		return &exitError{code: 1}
	}
	return nil
}

// doctor runs the checks and hands each result to out as it is known.
type doctor struct {
	configPath string
	out        doctorOutput
	failures   int

	cfg *config.Config
	// admin gets tokens: the daemon, or a Broker on the opened store; nil
	// when neither works.
	admin  accountAdmin
	daemon *controlClient
	// unreachable holds the protocols ("imap", "smtp", "pop3") whose upstream
	// cannot be used, and why.
	unreachable map[string]string
}

func (d *doctor) emit(r doctorResult) {
	if r.failed() {
		d.failures++
	}
	d.out.result(r)
}

func (d *doctor) run(ctx context.Context, mailbox string) {
	if !d.checkConfig() {
		return
	}
	var accounts []*config.Account
	if mailbox != "" {
		acct, err := findAccount(d.cfg, mailbox)
		if err != nil {
			d.emit(fail(checkConfig, err.Error(), "Name a mailbox configured in "+d.cfg.Path+" (broker status lists them), or add an [[account]] for it."))
			return
		}
		accounts = []*config.Account{acct}
	} else {
		accounts = d.cfg.Accounts
	}
	done := d.checkDaemon(ctx)
	defer done()
	d.checkNetwork(ctx, accounts)
	if len(accounts) == 0 {
		d.emit(warn(checkConfig, "no [[account]] is configured", "Add an [[account]] for each mailbox to "+d.cfg.Path+"."))
		return
	}
	d.checkAccounts(ctx, accounts)
}

// checkConfig is check 1: the file parses and validates.
func (d *doctor) checkConfig() bool {
	cfg, err := config.Load(d.configPath)
	if err != nil {
		d.emit(fail(checkConfig, err.Error(), "Correct "+d.configPath+" where the message says (broker serve refuses to start until then)."))
		return false
	}
	d.cfg = cfg
	var sections []string
	if cfg.IMAP != nil {
		sections = append(sections, "[imap]")
	}
	if cfg.SMTP != nil {
		sections = append(sections, "[smtp]")
	}
	if cfg.POP3 != nil {
		sections = append(sections, "[pop3]")
	}
	joined := strings.Join(sections, " and ")
	if len(sections) > 2 {
		joined = strings.Join(sections[:len(sections)-1], ", ") + " and " + sections[len(sections)-1]
	}
	d.emit(pass(checkConfig, fmt.Sprintf("%s: %s, %s; %s", cfg.Path, plural(len(cfg.Apps), "app"), plural(len(cfg.Accounts), "account"), joined)))
	for _, w := range cfg.Warnings {
		d.emit(warn(checkConfig, w, "Correct "+cfg.Path+" where the warning says."))
	}
	return true
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// runAs is the advice for a user who may not use broker's state.
const runAs = "Run broker doctor as root or as broker's service user (sudo -u broker broker doctor)."

// checkDaemon is check 2: the daemon answers on its control socket, or,
// when none runs, the database opens. It sets d.admin and returns what
// closes it.
func (d *doctor) checkDaemon(ctx context.Context) (done func()) {
	cfg := d.cfg
	sock := controlSocketPath(cfg)
	client, err := dialControl(sock)
	switch {
	case err == nil:
		d.admin, d.daemon = client, client
		detail := "running, answering on " + sock
		if st, err := client.stats(ctx); err == nil {
			detail += fmt.Sprintf("; %d IMAP and %d SMTP sessions", st.IMAPSessions, st.SMTPSessions)
		}
		d.emit(pass(checkDaemon, detail))
		return func() {}
	case !errors.Is(err, errNoDaemon):
		fix := runAs
		if !errors.Is(err, os.ErrPermission) {
			fix = "Check " + sock + ": remove it if no broker runs (systemctl status broker), or restart broker."
		}
		d.emit(fail(checkDaemon, err.Error(), fix))
		return func() {}
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, dbFile))
	if err != nil {
		d.emit(fail(checkDaemon, "no broker daemon is running, and the database does not open: "+err.Error(), storeFix(err)))
		return func() {}
	}
	key, err := broker.LoadKey(cfg.StateDir)
	if err != nil {
		st.Close()
		d.emit(fail(checkDaemon, "no broker daemon is running, and the sealing key cannot be read: "+err.Error(), storeFix(err)))
		return func() {}
	}
	b, err := broker.New(cfg, st, broker.Options{Key: key})
	if err != nil {
		st.Close()
		d.emit(fail(checkDaemon, "no broker daemon is running, and the database cannot be used: "+err.Error(),
			"Restore "+filepath.Join(cfg.StateDir, dbFile)+" from a backup, or check that "+broker.KeyFile+" is the key it was sealed with."))
		return func() {}
	}
	matchStateDirOwner(cfg.StateDir, dbFile, broker.KeyFile)
	d.admin = localBroker{b}
	d.emit(warn(checkDaemon, "no broker daemon is running (the database opens): legacy clients cannot connect",
		"Start broker (systemctl start broker; journalctl -u broker says why it stopped)."))
	return func() { b.Close(); st.Close() }
}

func storeFix(err error) string {
	switch {
	case errors.Is(err, os.ErrPermission):
		return runAs
	case strings.Contains(err.Error(), "lock"):
		return "Another process holds the database without answering on the control socket: find it (fuser -v on broker.db) and restart broker."
	}
	return "Check state_dir and the files in it (broker.db, broker.key): they must exist or be creatable, and belong to broker's user."
}

// target is a host:port broker connects to.
type target struct {
	check string // checkConnect*
	proto string // "identity", "imap", "smtp", "pop3"
	addr  string // host:port
	// lc is the [imap], [smtp] or [pop3] section, nil for the identity
	// platform.
	lc *config.Listener
	// implicitTLS: TLS from the first byte (IMAP, POP3; SMTP on 465).
	implicitTLS bool
}

func (d *doctor) targets(accounts []*config.Account) []target {
	var ts []target
	seen := map[string]bool{}
	for _, a := range accounts {
		u, err := url.Parse(a.App.Authority)
		if err != nil || u.Host == "" {
			continue
		}
		addr := u.Host
		if u.Port() == "" {
			port := "443"
			if u.Scheme == "http" {
				port = "80"
			}
			addr = net.JoinHostPort(u.Hostname(), port)
		}
		if !seen[addr] {
			seen[addr] = true
			ts = append(ts, target{check: checkConnectID, proto: "identity", addr: addr})
		}
	}
	if ic := d.cfg.IMAP; ic != nil {
		ts = append(ts, target{check: checkConnectIMAP, proto: "imap", addr: ic.Upstream, lc: &ic.Listener, implicitTLS: true})
	}
	if sc := d.cfg.SMTP; sc != nil {
		ts = append(ts, target{check: checkConnectSMTP, proto: "smtp", addr: sc.Upstream, lc: &sc.Listener, implicitTLS: sc.UpstreamImplicitTLS})
	}
	if pc := d.cfg.POP3; pc != nil {
		ts = append(ts, target{check: checkConnectPOP3, proto: "pop3", addr: pc.Upstream, lc: &pc.Listener, implicitTLS: true})
	}
	return ts
}

// checkNetwork is checks 3 and 4: DNS and TCP to every host, then TLS to
// each upstream. Hosts are tried at once; results come in order.
func (d *doctor) checkNetwork(ctx context.Context, accounts []*config.Account) {
	ts := d.targets(accounts)
	connected := make([]doctorResult, len(ts))
	parallel(len(ts), len(ts), func(i int) { connected[i] = probeConnect(ctx, ts[i]) })
	d.unreachable = map[string]string{}
	for i, r := range connected {
		d.emit(r)
		if r.failed() && ts[i].lc != nil {
			d.unreachable[ts[i].proto] = fmt.Sprintf("%s is unreachable", ts[i].addr)
		}
	}
	var upstreams []target
	for _, t := range ts {
		if t.lc != nil {
			upstreams = append(upstreams, t)
		}
	}
	secured := make([]doctorResult, len(upstreams))
	parallel(len(upstreams), len(upstreams), func(i int) {
		t := upstreams[i]
		if why, ok := d.unreachable[t.proto]; ok {
			secured[i] = skip(tlsCheck(t.proto), why)
			return
		}
		secured[i] = probeTLS(ctx, t)
	})
	for i, r := range secured {
		d.emit(r)
		if r.failed() {
			d.unreachable[upstreams[i].proto] = fmt.Sprintf("TLS to %s failed", upstreams[i].addr)
		}
	}
}

func tlsCheck(proto string) string {
	switch proto {
	case "smtp":
		return checkTLSSMTP
	case "pop3":
		return checkTLSPOP3
	}
	return checkTLSIMAP
}

// parallel runs f(0..n-1), at most limit at once.
func parallel(n, limit int, f func(i int)) {
	if limit < 1 {
		limit = 1
	}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f(i)
		}()
	}
	wg.Wait()
}

// checkAccounts is checks 5 to 8 for each account, several accounts at
// once, printed in order.
func (d *doctor) checkAccounts(ctx context.Context, accounts []*config.Account) {
	results := make([][]doctorResult, len(accounts))
	ready := make([]chan struct{}, len(accounts))
	for i := range ready {
		ready[i] = make(chan struct{})
	}
	go parallel(len(accounts), doctorParallel, func(i int) {
		defer close(ready[i])
		actx, cancel := context.WithTimeout(ctx, doctorAccountTimeout)
		defer cancel()
		results[i] = d.checkAccount(actx, accounts[i])
	})
	for i := range accounts {
		<-ready[i]
		d.out.account(accounts[i].Mailbox)
		for _, r := range results[i] {
			r.Account = accounts[i].Mailbox
			d.emit(r)
		}
	}
}

// checkAccount runs checks 5 to 8 for one account.
func (d *doctor) checkAccount(ctx context.Context, acct *config.Account) (rs []doctorResult) {
	wantIMAP, wantSMTP, wantPOP3 := d.cfg.IMAP != nil, d.cfg.SMTP != nil, d.cfg.POP3 != nil
	if wantSMTP && acct.ViaGraph() {
		// No SMTP AUTH: its Graph token and mailbox instead.
		wantSMTP = false
		defer func() {
			rs = append(rs, skip(checkSMTP, "the account sends through Microsoft Graph (smtp_via = \"graph\")"))
			rs = append(rs, d.checkGraphAccount(ctx, acct)...)
		}()
	}
	tok, tokResult := d.checkToken(ctx, acct)
	rs = []doctorResult{tokResult}
	if tok == "" {
		why := "no token"
		rs = append(rs, skip(checkPermissions, why))
		if wantIMAP {
			rs = append(rs, skip(checkIMAP, why))
		}
		if wantSMTP {
			rs = append(rs, skip(checkSMTP, why))
		}
		if wantPOP3 {
			rs = append(rs, skip(checkPOP3, why))
		}
		return rs
	}
	perms, permResult := checkPermissionsOf(acct, tok, broker.PermissionNeeds{IMAP: wantIMAP, SMTP: wantSMTP, POP3: wantPOP3})
	rs = append(rs, permResult)

	var im *imapOutcome
	var sm *smtpOutcome
	var po *pop3Outcome
	var imapResult, smtpResult, pop3Result doctorResult
	if wantIMAP {
		switch {
		case d.unreachable["imap"] != "":
			imapResult = skip(checkIMAP, d.unreachable["imap"])
		case perms != nil && (!perms.AudienceOK || perms.MissingIMAP != ""):
			imapResult = skip(checkIMAP, "the token cannot open the mailbox over IMAP")
		default:
			im = probeIMAP(ctx, d.cfg.IMAP, acct.Mailbox, tok)
		}
	}
	if wantSMTP {
		switch {
		case d.unreachable["smtp"] != "":
			smtpResult = skip(checkSMTP, d.unreachable["smtp"])
		case perms != nil && (!perms.AudienceOK || perms.MissingSMTP != ""):
			smtpResult = skip(checkSMTP, "the token cannot log in to SMTP")
		default:
			sm = probeSMTP(ctx, d.cfg.SMTP, acct.Mailbox, tok)
		}
	}
	if wantPOP3 {
		switch {
		case d.unreachable["pop3"] != "":
			pop3Result = skip(checkPOP3, d.unreachable["pop3"])
		case perms != nil && (!perms.AudienceOK || perms.MissingPOP3 != ""):
			pop3Result = skip(checkPOP3, "the token cannot open the mailbox over POP3")
		default:
			po = probePOP3(ctx, d.cfg.POP3, acct.Mailbox, tok)
		}
	}
	// Each protocol's answer narrows down the other's refusal.
	if im != nil {
		imapResult = im.result(acct, sm)
	}
	if sm != nil {
		smtpResult = sm.result(acct, im)
	}
	if po != nil {
		pop3Result = po.result(acct, im, sm)
	}
	if wantIMAP {
		rs = append(rs, imapResult)
	}
	if wantSMTP {
		rs = append(rs, smtpResult)
	}
	if wantPOP3 {
		rs = append(rs, pop3Result)
	}
	return rs
}

// checkToken is check 5. Through a daemon, it first makes a failing
// account try again at once.
func (d *doctor) checkToken(ctx context.Context, acct *config.Account) (string, doctorResult) {
	if d.admin == nil {
		return "", skip(checkToken, "neither the daemon nor the database can be used")
	}
	ctx, cancel := context.WithTimeout(ctx, doctorTokenTimeout)
	defer cancel()
	if d.daemon != nil {
		// An older daemon does not know the op; its answer is the same.
		d.daemon.retry(ctx, acct.Mailbox)
	}
	var it *broker.IssuedToken
	var err error
	if d.daemon != nil {
		it, err = d.daemon.token(ctx, acct.Mailbox)
	} else {
		it, err = d.admin.AccessToken(ctx, acct.Mailbox, "")
	}
	if err != nil {
		detail, fix := explainTokenFailure(acct, err)
		return "", fail(checkToken, detail, fix)
	}
	kind := "app-only (" + string(acct.Flow) + ")"
	if acct.Delegated() {
		kind = fmt.Sprintf("delegated (%s, signed in as %s)", acct.Flow, acct.LoginUser)
	}
	detail := kind
	if !it.Expires.IsZero() {
		detail += ", expires " + relative(it.Expires, time.Now())
	}
	return it.AccessToken, pass(checkToken, detail)
}

// explainTokenFailure turns a failed token request into what is wrong and
// its fix. Locally the error is a *broker.TokenError; through the daemon,
// its text.
func explainTokenFailure(acct *config.Account, err error) (detail, fix string) {
	msg := err.Error()
	var te *broker.TokenError
	needsLogin := false
	explanation := ""
	if errors.As(err, &te) {
		needsLogin, explanation = te.NeedsLogin, te.Explanation
		msg = te.Error()
	} else if i := strings.Index(msg, "token request failed: "); i >= 0 {
		msg = msg[i:]
		explanation = strings.TrimPrefix(msg, "token request failed: ")
		if j := strings.Index(explanation, ": "); strings.HasPrefix(explanation, "AADSTS") && j > 0 {
			explanation = explanation[j+2:]
		}
		if j := strings.Index(explanation, " (trace_id="); j >= 0 {
			explanation = explanation[:j]
		}
	}
	needsLogin = needsLogin || strings.Contains(msg, "broker login")
	detail = strings.TrimPrefix(msg, "token request failed: ")
	switch {
	case strings.Contains(msg, "access tokens are only handed to root"):
		return detail, runAs
	case needsLogin && acct.Delegated():
		return detail, "Run broker login " + acct.Mailbox + "."
	case explanation != "":
		// The explanation says what is wrong, then (after "; ") the fix.
		app := acct.App.Name
		if _, f, ok := strings.Cut(explanation, "; "); ok {
			return strings.Replace(detail, "; "+f, "", 1), upperFirst(strings.ReplaceAll(f, "<app>", app))
		}
		return detail, strings.ReplaceAll(explanation, "<app>", app)
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "deadline exceeded") || strings.Contains(msg, "timeout"):
		return detail, "The identity platform did not answer in time: check the connection to " + acct.App.Authority + " (a proxy or firewall) and try again."
	}
	return detail, "See broker status " + acct.Mailbox + " and the broker log (journalctl -u broker) for the token requests' errors."
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// checkPermissionsOf is check 6. It returns nil when the token cannot be
// read, which skips nothing later: Exchange decides.
func checkPermissionsOf(acct *config.Account, tok string, need broker.PermissionNeeds) (*broker.PermissionCheck, doctorResult) {
	p, c, err := broker.CheckTokenPermissionsFor(acct, tok, need)
	if err != nil {
		return nil, warn(checkPermissions, err.Error()+"; its permissions cannot be read here", "")
	}
	if !p.OK() {
		return p, fail(checkPermissions, p.Problem(), p.Fix())
	}
	kind := "scopes"
	if p.AppOnly {
		kind = "roles"
	}
	detail := fmt.Sprintf("aud %s; %s %s", c.Audience, kind, strings.Join(p.Granted, " "))
	return p, pass(checkPermissions, detail)
}

// doctorOutput prints results: as text lines or a JSON array.
type doctorOutput interface {
	// account starts the results of one account.
	account(mailbox string)
	result(r doctorResult)
	finish() error
}

type textOutput struct {
	w        io.Writer
	failures int
	warnings int
}

func (o *textOutput) account(mailbox string) { fmt.Fprintf(o.w, "\n%s\n", mailbox) }

func (o *textOutput) result(r doctorResult) {
	mark := "✓"
	switch {
	case r.Skipped:
		mark = "–"
	case !r.OK:
		mark = "✗"
		o.failures++
	case r.Warning:
		mark = "!"
		o.warnings++
	}
	label := checkLabels[r.Check]
	if label == "" {
		label = r.Check
	}
	detail := r.Detail
	if r.Skipped {
		detail = "skipped: " + detail
	}
	fmt.Fprintf(o.w, "%s %-18s %s\n", mark, label, oneLineText(detail))
	if r.Fix != "" && (r.failed() || r.Warning) {
		fmt.Fprintf(o.w, "  %-18s fix: %s\n", "", oneLineText(r.Fix))
	}
}

func (o *textOutput) finish() error {
	fmt.Fprintln(o.w)
	switch {
	case o.failures > 0:
		fmt.Fprintf(o.w, "%s failed", plural(o.failures, "check"))
		if o.warnings > 0 {
			fmt.Fprintf(o.w, ", %s", plural(o.warnings, "warning"))
		}
		fmt.Fprintln(o.w, ".")
	case o.warnings > 0:
		fmt.Fprintf(o.w, "All checks passed, with %s.\n", plural(o.warnings, "warning"))
	default:
		fmt.Fprintln(o.w, "All checks passed.")
	}
	return nil
}

// oneLineText keeps a detail from an upstream on one line.
func oneLineText(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

type jsonOutput struct {
	w       io.Writer
	results []doctorResult
}

func (o *jsonOutput) account(string) {}

func (o *jsonOutput) result(r doctorResult) { o.results = append(o.results, r) }

func (o *jsonOutput) finish() error {
	if o.results == nil {
		o.results = []doctorResult{}
	}
	enc := json.NewEncoder(o.w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // fixes name admin-center paths with ">"
	return enc.Encode(o.results)
}
