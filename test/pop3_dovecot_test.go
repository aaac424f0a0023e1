package test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/xoauth2"
	"github.com/mailbroker/broker/test/harness"
	"github.com/mailbroker/broker/test/m365sim"
)

// pop3Env is a broker daemon whose [pop3] upstream is a real Dovecot POP3
// server validating the simulated identity platform's tokens.
type pop3Env struct {
	Dovecot  *harness.Dovecot
	Daemon   *daemon
	Addr     string // broker's POP3 listener
	Password string
}

var pop3ListeningRE = regexp.MustCompile(`msg=listening proto=pop3 addr=(\S+)`)

func newPOP3Env(t *testing.T, messages int) *pop3Env {
	t.Helper()
	return newPOP3EnvConfig(t, messages, "")
}

// newPOP3EnvConfig is newPOP3Env with extra appended to broker's
// configuration.
func newPOP3EnvConfig(t *testing.T, messages int, extra string) *pop3Env {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	tid := entra.AddTenant(tenant)
	secret := "pop3-env-secret"
	entra.AddApp(m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: secret,
		Roles: []string{"IMAP.AccessAsApp", "POP.AccessAsApp"}, Mailboxes: []string{mailbox},
	})
	dc := harness.StartDovecot(t, harness.DovecotOptions{
		KeyID:        entra.KeyID(),
		PublicKeyPEM: entra.PublicKeyPEM(),
		Issuers:      []string{entra.Issuer(tid)},
		Audience:     "https://outlook.office.com",
		Mailboxes:    []string{mailbox},
		POP3:         true,
	})
	for i := 1; i <= messages; i++ {
		if err := dc.Deliver(mailbox, pop3Message(i)); err != nil {
			t.Fatalf("deliver to dovecot: %v\n%s", err, dc.LogTail())
		}
	}
	dir := t.TempDir()
	secretFile := writeFile(t, dir, "client.secret", []byte(secret))
	cfg := brokerConfig(dir+"/state", dc.IMAPAddr, dc.CAFile, entra.URL(), tenant, clientID, secretFile, mailbox) +
		fmt.Sprintf("\n[pop3]\nlisten = [\"127.0.0.1:0\"]\nupstream = %q\nupstream_ca_file = %q\n", dc.POP3Addr, dc.CAFile) + extra
	env := &pop3Env{Dovecot: dc, Daemon: startDaemon(t, dir, cfg)}
	m := pop3ListeningRE.FindStringSubmatch(env.Daemon.Log())
	if m == nil {
		t.Fatalf("broker logged no POP3 listener\n%s", env.Daemon.Log())
	}
	env.Addr = m[1]
	_, env.Password = env.Daemon.addAppPassword(mailbox)
	return env
}

func pop3Message(i int) []byte {
	return fmt.Appendf(nil, "From: customer%d@example.com\r\nTo: %s\r\nSubject: pop ticket %d\r\nMessage-ID: <p%d@example.com>\r\n\r\nPlease call me back.\r\n.a line with a leading dot\r\n", i, mailbox, i, i)
}

// rawPOP3 is a line-level POP3 client.
type rawPOP3 struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRawPOP3(t testing.TB, c net.Conn) *rawPOP3 {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	p := &rawPOP3{t: t, c: c, br: bufio.NewReaderSize(c, 64<<10)}
	if g := p.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	return p
}

func (p *rawPOP3) line() string {
	p.t.Helper()
	l, err := p.br.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (p *rawPOP3) cmd(s string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.c, s+"\r\n"); err != nil {
		p.t.Fatalf("write: %v", err)
	}
	return p.line()
}

// multi returns a multi-line reply's raw bytes, dot-stuffed, without the
// status line and the final ".".
func (p *rawPOP3) multi(s string) []byte {
	p.t.Helper()
	if r := p.cmd(s); !strings.HasPrefix(r, "+OK") {
		p.t.Fatalf("%s: %q", s, r)
	}
	var b bytes.Buffer
	for {
		l, err := p.br.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			p.t.Fatalf("%s: read: %v", s, err)
		}
		if err == nil && string(l) == ".\r\n" {
			return b.Bytes()
		}
		b.Write(l)
	}
}

func (env *pop3Env) dial(t testing.TB) *rawPOP3 {
	t.Helper()
	c, err := net.Dial("tcp", env.Addr)
	if err != nil {
		t.Fatal(err)
	}
	return dialRawPOP3(t, c)
}

func (env *pop3Env) login(t testing.TB) *rawPOP3 {
	t.Helper()
	p := env.dial(t)
	p.cmd("USER " + mailbox)
	if r := p.cmd("PASS " + env.Password); r != "+OK Logged in" {
		t.Fatalf("PASS: %q\n%s", r, env.Daemon.Log())
	}
	return p
}

// dialDovecot logs in to Dovecot's POP3 directly with token.
func (env *pop3Env) dialDovecot(t testing.TB, token string) *rawPOP3 {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(env.Dovecot.CACertPEM)
	host, _, _ := net.SplitHostPort(env.Dovecot.POP3Addr)
	c, err := tls.Dial("tcp", env.Dovecot.POP3Addr, &tls.Config{RootCAs: pool, ServerName: host})
	if err != nil {
		t.Fatal(err)
	}
	p := dialRawPOP3(t, c)
	if r := p.cmd("AUTH XOAUTH2"); !strings.HasPrefix(r, "+") {
		t.Fatalf("AUTH XOAUTH2: %q", r)
	}
	if r := p.cmd(base64.StdEncoding.EncodeToString(xoauth2.Response(mailbox, token))); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("direct XOAUTH2 login: %q", r)
	}
	return p
}

func (env *pop3Env) stat(t testing.TB) string {
	t.Helper()
	p := env.login(t)
	s := p.cmd("STAT")
	p.cmd("QUIT")
	return s
}

// TestPOP3Clients: curl, Python's poplib and fetchmail through broker to
// Dovecot's POP3; deletions only at QUIT.
func TestPOP3Clients(t *testing.T) {
	env := newPOP3Env(t, 3)
	// curl: a listing and a message.
	out := runClient(t, "curl", "-sS", "--max-time", "30", "-u", mailbox+":"+env.Password, "pop3://"+env.Addr+"/")
	if n := len(strings.Fields(out)); n != 6 {
		t.Fatalf("curl listing: %q", out)
	}
	out = runClient(t, "curl", "-sS", "--max-time", "30", "-u", mailbox+":"+env.Password, "pop3://"+env.Addr+"/2")
	if !strings.Contains(out, "Subject: pop ticket 2") || !strings.Contains(out, "\n.a line with a leading dot") {
		t.Fatalf("curl RETR: %q", out)
	}
	// AUTH PLAIN from curl.
	out = runClient(t, "curl", "-sS", "--max-time", "30", "--login-options", "AUTH=PLAIN", "-u", mailbox+":"+env.Password, "pop3://"+env.Addr+"/1")
	if !strings.Contains(out, "Subject: pop ticket 1") {
		t.Fatalf("curl AUTH PLAIN: %q", out)
	}

	// poplib: UIDL, TOP, RETR, DELE + connection drop (kept), then
	// DELE + QUIT (deleted).
	out = runClient(t, "python3", "-c", poplibScript, env.Addr, mailbox, env.Password)
	if !strings.Contains(out, "poplib ok") {
		t.Fatalf("poplib: %q", out)
	}
	if s := env.stat(t); !strings.HasPrefix(s, "+OK 2 ") {
		t.Fatalf("after poplib: STAT %q, want 2 messages", s)
	}

	// fetchmail with keep: everything fetched, nothing deleted; then
	// without: everything fetched and deleted at QUIT.
	for _, keep := range []bool{true, false} {
		got := runFetchmail(t, env.Addr, env.Password, keep)
		if n := strings.Count(got, "Subject: pop ticket"); n != 2 {
			t.Fatalf("fetchmail keep=%v delivered %d messages:\n%s", keep, n, got)
		}
		want := "+OK 2 "
		if !keep {
			want = "+OK 0 "
		}
		if s := env.stat(t); !strings.HasPrefix(s, want) {
			t.Fatalf("after fetchmail keep=%v: STAT %q, want %q", keep, s, want)
		}
	}

	// Failures: wrong and unknown users get the same answer.
	p := env.dial(t)
	for _, user := range []string{mailbox, "nobody@contoso.com"} {
		p.cmd("USER " + user)
		if r := p.cmd("PASS wrong-password"); r != "-ERR [AUTH] Authentication failed" {
			t.Fatalf("wrong password for %s: %q", user, r)
		}
	}
	checkNoSecrets(t, env)
}

// checkNoSecrets scans the daemon's log for the app password, its
// base64 forms and the access token.
func checkNoSecrets(t *testing.T, env *pop3Env) {
	t.Helper()
	log := env.Daemon.Log()
	token := strings.TrimSpace(env.Daemon.cli("token", mailbox))
	secrets := map[string]string{
		"app password":          env.Password,
		"app password base64":   base64.StdEncoding.EncodeToString([]byte(env.Password)),
		"PLAIN response":        base64.StdEncoding.EncodeToString([]byte("\x00" + mailbox + "\x00" + env.Password)),
		"access token":          token,
		"XOAUTH2 response":      base64.StdEncoding.EncodeToString(xoauth2.Response(mailbox, token)),
		"access token's middle": token[len(token)/2 : len(token)/2+32],
	}
	for name, s := range secrets {
		if s != "" && strings.Contains(log, s) {
			t.Errorf("the daemon's log holds the %s", name)
		}
	}
}

const poplibScript = `
import poplib, sys
host, port = sys.argv[1].rsplit(":", 1)
user, password = sys.argv[2], sys.argv[3]
p = poplib.POP3(host, int(port), timeout=30)
caps = p.capa()
assert "TOP" in caps and "UIDL" in caps and "USER" in caps, caps
p.user(user)
p.pass_(password)
n, size = p.stat()
assert n == 3, (n, size)
resp, uids, _ = p.uidl()
assert len(uids) == 3, uids
resp, lines, _ = p.top(1, 0)
assert any(l.startswith(b"Subject: pop ticket 1") for l in lines), lines
assert b"Please call me back." not in lines, lines
resp, lines, _ = p.retr(1)
assert b".a line with a leading dot" in lines, lines
p.dele(1)
# Dropped without QUIT: POP3's UPDATE state never comes, nothing is deleted.
p.sock.close()

p = poplib.POP3(host, int(port), timeout=30)
p.user(user)
p.pass_(password)
n, size = p.stat()
assert n == 3, ("deleted without QUIT", n)
p.dele(1)
p.quit()
print("poplib ok")
`

// runFetchmail fetches the mailbox through broker with fetchmail, speaking
// USER/PASS, and returns what its MDA wrote.
func runFetchmail(t *testing.T, addr, password string, keep bool) string {
	t.Helper()
	if _, err := exec.LookPath("fetchmail"); err != nil {
		t.Fatal("fetchmail is not installed: run `make deps` (see .ci/deps)")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "delivered")
	host, port, _ := net.SplitHostPort(addr)
	keepWord := "nokeep"
	if keep {
		keepWord = "keep"
	}
	rc := fmt.Sprintf("set no syslog\npoll %s port %s proto POP3 auth password timeout 60\n"+
		"  user %q password %q is root here\n  %s fetchall sslproto '' no idle\n  mda \"/bin/sh -c 'cat >> %s'\"\n",
		host, port, mailbox, password, keepWord, out)
	rcFile := filepath.Join(dir, "fetchmailrc")
	if err := os.WriteFile(rcFile, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("fetchmail", "-f", rcFile, "--nodetach", "-v", "--pidfile", filepath.Join(dir, "pid"))
	cmd.Env = append(os.Environ(), "HOME="+dir, "FETCHMAILHOME="+dir)
	outb, err := cmd.CombinedOutput()
	// fetchmail exits 0 when it fetched mail, 1 when there was none.
	if err != nil {
		t.Fatalf("fetchmail: %v\n%s", err, outb)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("fetchmail delivered nothing: %v\n%s", err, outb)
	}
	return string(data)
}

// TestPOP3LargeMessage retrieves a 10 MB message through broker and
// directly from Dovecot: the same bytes, and how long each took.
func TestPOP3LargeMessage(t *testing.T) {
	env := newPOP3Env(t, 0)
	body := make([]byte, 0, 10<<20)
	raw := make([]byte, 57)
	for len(body) < 10<<20 {
		rand.Read(raw)
		body = append(body, base64.StdEncoding.EncodeToString(raw)...)
		body = append(body, "\r\n"...)
	}
	body = append(body, ".\r\n..\r\n.leading\r\n"...)
	msg := append(fmt.Appendf(nil, "From: big@example.com\r\nTo: %s\r\nSubject: big\r\n\r\n", mailbox), body...)
	if err := env.Dovecot.Deliver(mailbox, msg); err != nil {
		t.Fatalf("deliver: %v\n%s", err, env.Dovecot.LogTail())
	}

	p := env.login(t)
	start := time.Now()
	viaBroker := p.multi("RETR 1")
	brokerTime := time.Since(start)
	p.cmd("QUIT")

	token := strings.TrimSpace(env.Daemon.cli("token", mailbox))
	d := env.dialDovecot(t, token)
	start = time.Now()
	direct := d.multi("RETR 1")
	directTime := time.Since(start)
	d.cmd("QUIT")

	if !bytes.Equal(viaBroker, direct) {
		t.Fatalf("RETR through broker: %d bytes, directly: %d bytes, not identical", len(viaBroker), len(direct))
	}
	// The delivered body, dot-stuffed, ends the message.
	stuffed := bytes.ReplaceAll(append([]byte("\r\n"), body...), []byte("\r\n."), []byte("\r\n.."))
	if !bytes.HasSuffix(viaBroker, stuffed[2:]) {
		t.Fatal("RETR through broker does not end with the delivered body")
	}
	t.Logf("RETR of a %d-byte message: %v through broker, %v directly from Dovecot", len(viaBroker), brokerTime, directTime)
}

// TestPOP3Robustness: malformed input and overlong lines against the built
// daemon; the session survives what it can and the daemon stays up.
func TestPOP3Robustness(t *testing.T) {
	env := newPOP3Env(t, 1)
	p := env.dial(t)
	for _, tt := range []struct{ send, want string }{
		{"USER " + strings.Repeat("a", 1000), "-ERR Line too long"},
		{"NOOP " + strings.Repeat("b", 30000), "-ERR Line too long"},
		{"USER a\x00b", "-ERR Invalid characters"},
		{"RETR 1", "-ERR Not logged in"},
		{"AUTH PLAIN !!!", "-ERR Invalid base64"},
		{"", "-ERR Unknown command"},
		{"CAPA", "+OK"},
	} {
		if r := p.cmd(tt.send); !strings.HasPrefix(r, tt.want) {
			t.Fatalf("%.30q: got %q, want %q", tt.send, r, tt.want)
		}
	}
	for l := p.line(); l != "."; l = p.line() {
	}
	// A line that never ends is cut off.
	c, err := net.Dial("tcp", env.Addr)
	if err != nil {
		t.Fatal(err)
	}
	q := dialRawPOP3(t, c)
	go c.Write(bytes.Repeat([]byte("x"), 200<<10))
	if r := q.line(); r != "-ERR Line too long" {
		t.Fatalf("runaway line: %q", r)
	}
	// The daemon still serves.
	if s := env.stat(t); !strings.HasPrefix(s, "+OK 1 ") {
		t.Fatalf("STAT %q", s)
	}
}
