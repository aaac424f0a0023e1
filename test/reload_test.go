package test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/mailbroker/broker/test/m365sim"
)

// secondMailbox is an account that reloads add and remove.
const secondMailbox = "sales@contoso.com"

// opsEnv is a daemon in front of the simulated Microsoft 365 whose
// configuration a test rewrites: an app with access to mailbox and
// secondMailbox, which broker.toml may list or not.
type opsEnv struct {
	Entra    *m365sim.Entra
	Upstream *m365sim.IMAP
	Daemon   *daemon
	Password string // mailbox's app password

	dir, state, ca, secret string
}

// newOpsEnv starts the simulator and a daemon configured by render (see
// opsConfig) with the accounts named.
func newOpsEnv(t *testing.T, extra string, accounts ...string) *opsEnv {
	t.Helper()
	return newOpsEnvWith(t, opsOptions{Extra: extra}, accounts...)
}

// opsOptions shape an opsEnv.
type opsOptions struct {
	// Listen is the [imap] listen line; default 127.0.0.1:0.
	Listen string
	// Extra are more sections of broker.toml.
	Extra string
	// Prepare, if set, changes the daemon's command before it starts.
	Prepare func(*exec.Cmd)
}

func newOpsEnvWith(t *testing.T, o opsOptions, accounts ...string) *opsEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	secret := "Zx8Q~ops.secret-value_0123456789abcdefXYZ"
	entra.AddTenant(tenant)
	entra.AddApp(m365sim.App{Tenant: tenant, ClientID: clientID, Secret: secret,
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{mailbox, secondMailbox}})
	env := &opsEnv{Entra: entra}
	if env.Upstream, err = m365sim.NewIMAP(entra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Upstream.Close() })
	for _, mb := range []string{mailbox, secondMailbox} {
		if err := env.Upstream.AddMailbox(mb); err != nil {
			t.Fatal(err)
		}
	}
	env.dir = t.TempDir()
	env.state = filepath.Join(env.dir, "state")
	env.ca = writeFile(t, env.dir, "upstream-ca.pem", env.Upstream.CACertPEM())
	env.secret = writeFile(t, env.dir, "client.secret", []byte(secret+"\n"))
	if o.Listen == "" {
		o.Listen = `listen = ["127.0.0.1:0"]`
	}
	env.Daemon = startDaemonCmd(t, brokerBin, env.dir, env.config(o.Listen, o.Extra, accounts...), o.Prepare)
	if len(accounts) > 0 && accounts[0] == mailbox {
		_, env.Password = env.Daemon.addAppPassword(mailbox)
	}
	return env
}

// config renders broker.toml: listen is the [imap] listen line, extra
// more sections, accounts the [[account]]s.
func (env *opsEnv) config(listen, extra string, accounts ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `state_dir = %q

[imap]
%s
upstream = %q
upstream_ca_file = %q

[[app]]
name = "contoso"
tenant = %q
client_id = %q
client_secret_file = %q
authority = %q
`, env.state, listen, env.Upstream.Addr(), env.ca, tenant, clientID, env.secret, env.Entra.URL())
	for _, a := range accounts {
		fmt.Fprintf(&b, "\n[[account]]\nmailbox = %q\napp = \"contoso\"\nflow = \"client_credentials\"\n", a)
	}
	b.WriteString(extra)
	return b.String()
}

// rewrite replaces the daemon's configuration file.
func (env *opsEnv) rewrite(t *testing.T, config string) {
	t.Helper()
	if err := os.WriteFile(env.Daemon.config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reload runs `broker reload` and returns its exit code and output.
func (env *opsEnv) reload(t *testing.T) (code int, stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := runBroker("reload", "-config", env.Daemon.config)
	return exitCode(err), stdout, stderr
}

// idleSession is a logged-in client in IDLE on INBOX.
type idleSession struct {
	c      *imapclient.Client
	idle   *imapclient.IdleCommand
	exists chan uint32
}

func startIdle(t *testing.T, addr, user, password string) *idleSession {
	t.Helper()
	s := &idleSession{exists: make(chan uint32, 16)}
	c, err := imapclient.DialInsecure(addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					s.exists <- *data.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s.c = c
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("LOGIN %s: %v", user, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if s.idle, err = c.Idle(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	return s
}

// appendMessage appends a message to INBOX through a new session.
func appendMessage(t *testing.T, addr, user, password, subject string) {
	t.Helper()
	c := dialProxy(t, addr)
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("LOGIN %s: %v", user, err)
	}
	msg := []byte("Subject: " + subject + "\r\n\r\nhello\r\n")
	app := c.Append("INBOX", int64(len(msg)), nil)
	app.Write(msg)
	app.Close()
	if _, err := app.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	c.Logout().Wait()
}

// TestReloadAddsAccountWithoutDroppingIDLE: an account added to the file
// is served after `broker reload` (and SIGHUP), while a session that sat
// in IDLE across both reloads still gets its new mail.
func TestReloadAddsAccountWithoutDroppingIDLE(t *testing.T) {
	env := newOpsEnv(t, "", mailbox)
	idler := startIdle(t, env.Daemon.IMAPAddr, mailbox, env.Password)

	if _, err := runBrokerErr("app-password", "add", secondMailbox, "-config", env.Daemon.config); err == nil {
		t.Fatal("app-password add for an account not configured yet succeeded")
	}
	env.rewrite(t, env.config(`listen = ["127.0.0.1:0"]`, "", mailbox, secondMailbox))
	code, out, errOut := env.reload(t)
	if code != 0 || !strings.Contains(out, "added "+secondMailbox) {
		t.Fatalf("broker reload: exit %d, %q, %q", code, out, errOut)
	}
	env.Daemon.waitLog("msg=\"configuration reloaded\"")
	_, salesPassword := env.Daemon.addAppPassword(secondMailbox)
	appendMessage(t, env.Daemon.IMAPAddr, secondMailbox, salesPassword, "to sales")

	// SIGHUP does the same (systemctl reload); nothing changed this time.
	if err := env.Daemon.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	env.Daemon.waitLogCount("msg=\"configuration reloaded\"", 2)

	// The IDLE session lived through both reloads.
	appendMessage(t, env.Daemon.IMAPAddr, mailbox, env.Password, "to support")
	select {
	case n := <-idler.exists:
		if n < 1 {
			t.Fatalf("EXISTS %d", n)
		}
	case <-time.After(notifyTimeout):
		t.Fatalf("the IDLE session got no EXISTS after the reloads\n%s", env.Daemon.Log())
	}
	if err := idler.idle.Close(); err != nil {
		t.Fatalf("DONE: %v", err)
	}
	if err := idler.idle.Wait(); err != nil {
		t.Fatalf("IDLE after the reloads: %v", err)
	}

	// Removed again: refused like an unknown user; its app password stays.
	env.rewrite(t, env.config(`listen = ["127.0.0.1:0"]`, "", mailbox))
	if code, out, errOut := env.reload(t); code != 0 || !strings.Contains(out, "removed "+secondMailbox) {
		t.Fatalf("broker reload: exit %d, %q, %q", code, out, errOut)
	}
	if e := loginError(t, env.Daemon.IMAPAddr, secondMailbox, salesPassword); e == nil || !strings.Contains(e.Text, "Invalid credentials") {
		t.Fatalf("login of a removed account: %v", e)
	}
	env.rewrite(t, env.config(`listen = ["127.0.0.1:0"]`, "", mailbox, secondMailbox))
	if code, _, errOut := env.reload(t); code != 0 {
		t.Fatalf("broker reload: exit %d, %q", code, errOut)
	}
	appendMessage(t, env.Daemon.IMAPAddr, secondMailbox, salesPassword, "back again")
}

// TestReloadBrokenConfigKeepsServing: a file with a mistake is rejected
// with the reason in the log and in broker reload's error, exit 78; the
// old configuration serves on.
func TestReloadBrokenConfigKeepsServing(t *testing.T) {
	env := newOpsEnv(t, "", mailbox)
	idler := startIdle(t, env.Daemon.IMAPAddr, mailbox, env.Password)

	env.rewrite(t, env.config(`listen = ["127.0.0.1:0"]`, "\n[limits]\nmax_connections = -5\n", mailbox))
	code, out, errOut := env.reload(t)
	if code == 0 || !strings.Contains(errOut, "limits.max_connections") || !strings.Contains(errOut, "stays in force") {
		t.Fatalf("broker reload of a broken file: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	line := env.Daemon.waitLog("reload failed")
	if !strings.Contains(line, "limits.max_connections") {
		t.Fatalf("the log's reload failure does not say why: %s", line)
	}
	// Not even TOML: the daemon is still found and says why.
	env.rewrite(t, "state_dir = \""+env.state+"\"\n[imap\n")
	if code, _, errOut := env.reload(t); code == 0 || !strings.Contains(errOut, "broker.toml") {
		t.Fatalf("broker reload of a broken file: exit %d, %q", code, errOut)
	}
	// SIGHUP with the broken file: logged, and still serving.
	env.Daemon.cmd.Process.Signal(syscall.SIGHUP)
	env.Daemon.waitLogCount("reload failed", 3)
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("LOGIN after a rejected reload: %v", err)
	}
	appendMessage(t, env.Daemon.IMAPAddr, mailbox, env.Password, "still here")
	select {
	case <-idler.exists:
	case <-time.After(notifyTimeout):
		t.Fatal("the IDLE session got no EXISTS after a rejected reload")
	}
}

// TestReloadRebindsListeners: a listener added to the file is bound, one
// removed is closed, and one kept keeps its socket (its sessions too).
func TestReloadRebindsListeners(t *testing.T) {
	env := newOpsEnv(t, "", mailbox)
	kept := env.Daemon.IMAPAddr
	idler := startIdle(t, kept, mailbox, env.Password)
	old := env.Daemon.IMAPAddr
	added := freeAddr(t)
	env.rewrite(t, env.config(fmt.Sprintf("listen = [%q, %q]", kept, added), "", mailbox))
	if code, out, errOut := env.reload(t); code != 0 || !strings.Contains(out, "now listening on imap.listen "+added) {
		t.Fatalf("broker reload: exit %d, %q, %q", code, out, errOut)
	}
	for _, addr := range []string{kept, added} {
		c := dialProxy(t, addr)
		if err := c.Login(mailbox, env.Password).Wait(); err != nil {
			t.Fatalf("LOGIN on %s: %v", addr, err)
		}
	}
	env.rewrite(t, env.config(fmt.Sprintf("listen = [%q]", added), "", mailbox))
	if code, out, errOut := env.reload(t); code != 0 || !strings.Contains(out, "stopped listening on imap.listen "+old) {
		t.Fatalf("broker reload: exit %d, %q, %q", code, out, errOut)
	}
	if c, err := imapclient.DialInsecure(old, nil); err == nil {
		c.Close()
		t.Fatalf("%s still accepts after its removal", old)
	}
	// The session accepted there goes on.
	appendMessage(t, added, mailbox, env.Password, "after the rebind")
	select {
	case <-idler.exists:
	case <-time.After(notifyTimeout):
		t.Fatal("the IDLE session on the removed listener got no EXISTS")
	}
	// An address taken by someone else: rejected whole.
	busy := freeAddr(t)
	l, err := netListen(busy)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	env.rewrite(t, env.config(fmt.Sprintf("listen = [%q, %q]", added, busy), "", mailbox, secondMailbox))
	if code, _, errOut := env.reload(t); code == 0 || !strings.Contains(errOut, "address already in use") {
		t.Fatalf("broker reload with a busy address: exit %d, %q", code, errOut)
	}
	if _, errOut, _ := runBroker("status", "-config", env.Daemon.config, secondMailbox); !strings.Contains(errOut, "not a configured account") {
		t.Fatalf("a rejected reload added its account: %s", errOut)
	}
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func netListen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func runBrokerErr(args ...string) (string, error) {
	_, stderr, err := runBroker(args...)
	return stderr, err
}

// TestReloadAppliesLimitsToNewSessions: a lowered cap refuses new
// connections while the sessions over it go on; raised again, new
// connections get in.
func TestReloadAppliesLimitsToNewSessions(t *testing.T) {
	env := newOpsEnv(t, "", mailbox)
	listen := fmt.Sprintf("listen = [%q]", env.Daemon.IMAPAddr)
	idler := startIdle(t, env.Daemon.IMAPAddr, mailbox, env.Password)
	env.rewrite(t, env.config(listen, "\n[limits]\nmax_connections = 1\n", mailbox))
	if code, _, errOut := env.reload(t); code != 0 {
		t.Fatalf("broker reload: exit %d, %q", code, errOut)
	}
	c, err := net.Dial("tcp", env.Daemon.IMAPAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if !strings.HasPrefix(line, "* BYE Too many connections") {
		t.Fatalf("a connection over the lowered cap got %q", line)
	}
	env.rewrite(t, env.config(listen, "", mailbox))
	if code, _, errOut := env.reload(t); code != 0 {
		t.Fatalf("broker reload: exit %d, %q", code, errOut)
	}
	appendMessage(t, env.Daemon.IMAPAddr, mailbox, env.Password, "under the cap again")
	select {
	case <-idler.exists:
	case <-time.After(notifyTimeout):
		t.Fatal("the session over the lowered cap did not go on")
	}
}
