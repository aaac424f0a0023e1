package test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPOP3SIGTERMIdle: a POP3 client logged in and idle between commands,
// and one not logged in, end at once on SIGTERM (not at the drain
// timeout): the first sees the connection closed without a word, the
// second gets -ERR [SYS/TEMP]; broker exits 0.
func TestPOP3SIGTERMIdle(t *testing.T) {
	env := newPOP3EnvConfig(t, 2, drainConfig)
	idle := env.login(t)
	if r := idle.cmd("DELE 1"); r[:3] != "+OK" {
		t.Fatalf("DELE: %q", r)
	}
	notLoggedIn := env.dial(t)
	token := strings.TrimSpace(env.Daemon.cli("token", mailbox))

	sent := time.Now()
	if err := env.Daemon.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if r := notLoggedIn.line(); r[:min(len(r), 16)] != "-ERR [SYS/TEMP] " {
		t.Fatalf("not logged in: got %q, want -ERR [SYS/TEMP]", r)
	}
	for name, p := range map[string]*rawPOP3{"idle": idle, "not logged in": notLoggedIn} {
		p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		rest, err := io.ReadAll(p.br)
		if err != nil || len(rest) > 0 {
			t.Fatalf("%s: got %q, %v; want the connection closed", name, rest, err)
		}
		t.Logf("%s: closed after %v", name, time.Since(sent).Round(time.Millisecond))
		p.c.Close()
	}
	took := env.Daemon.waitExit(t, sent, 10*time.Second)
	if took > lingerAfterBye {
		t.Fatalf("exit took %v: the drain waited for something\n%s", took, env.Daemon.Log())
	}
	// No QUIT reached Dovecot: the DELE was not applied.
	if err := env.Dovecot.Deliver(mailbox, pop3Message(3)); err != nil {
		t.Fatal(err)
	}
	if s := env.dialDovecot(t, token).cmd("STAT"); s[:6] != "+OK 3 " {
		t.Fatalf("STAT after the drain: %q, want 3 messages (the DELE not applied)", s)
	}
}

// TestPOP3SIGTERMDuringRETR: SIGTERM while a 10 MB RETR is under way: the
// message arrives whole, then the connection closes, and broker exits 0.
func TestPOP3SIGTERMDuringRETR(t *testing.T) {
	env := newPOP3EnvConfig(t, 0, drainConfig)
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
	token := strings.TrimSpace(env.Daemon.cli("token", mailbox))
	d := env.dialDovecot(t, token)
	direct := d.multi("RETR 1")
	d.cmd("QUIT")

	p := env.login(t)
	if _, err := io.WriteString(p.c, "RETR 1\r\n"); err != nil {
		t.Fatal(err)
	}
	if r := p.line(); r[:3] != "+OK" {
		t.Fatalf("RETR: %q", r)
	}
	// A slow reader: 64 KiB in, the rest still on its way.
	first := make([]byte, 64<<10)
	if _, err := io.ReadFull(p.br, first); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	if err := env.Daemon.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	p.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	rest, err := io.ReadAll(p.br)
	if err != nil {
		t.Fatalf("reading the rest: %v after %d bytes", err, len(rest))
	}
	got := append(first, rest...)
	want := append(direct, ".\r\n"...)
	if !bytes.Equal(got, want) {
		t.Fatalf("RETR during the drain: %d bytes, want %d identical to Dovecot's, then the close", len(got), len(want))
	}
	t.Logf("RETR of %d bytes completed %v after SIGTERM, then the connection closed", len(got), time.Since(sent).Round(time.Millisecond))
	p.c.Close()
	env.Daemon.waitExit(t, sent, 10*time.Second)
}

// TestPOP3ReloadSharesSlots: a reload that lowers [pop3]
// max_connections_per_mailbox counts the sessions of the servers it
// replaced: a new login over the new cap waits and gets -ERR [IN-USE],
// while the old session goes on; once it ends, logins pass again.
func TestPOP3ReloadSharesSlots(t *testing.T) {
	env := newPOP3EnvConfig(t, 1, "max_connections_per_mailbox = 2\nconnection_wait = \"1s\"\n")
	old := env.login(t)
	cfg, err := os.ReadFile(env.Daemon.config)
	if err != nil {
		t.Fatal(err)
	}
	next := strings.Replace(string(cfg), "[pop3]\nlisten = [\"127.0.0.1:0\"]", fmt.Sprintf("[pop3]\nlisten = [%q]", env.Addr), 1)
	next = strings.Replace(next, "max_connections_per_mailbox = 2", "max_connections_per_mailbox = 1", 1)
	if next == string(cfg) {
		t.Fatal("configuration not rewritten")
	}
	if err := os.WriteFile(env.Daemon.config, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := runBroker("reload", "-config", env.Daemon.config); err != nil {
		t.Fatalf("broker reload: %v, %q", err, errOut)
	}
	p := env.dial(t)
	p.cmd("USER " + mailbox)
	if r := p.cmd("PASS " + env.Password); !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Fatalf("a login over the lowered cap got %q, want -ERR [IN-USE]\n%s", r, env.Daemon.Log())
	}
	if r := old.cmd("STAT"); !strings.HasPrefix(r, "+OK 1 ") {
		t.Fatalf("the session from before the reload: STAT %q", r)
	}
	old.cmd("QUIT")
	var r string
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.cmd("USER " + mailbox)
		if r = p.cmd("PASS " + env.Password); r == "+OK Logged in" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r != "+OK Logged in" {
		t.Fatalf("login after the old session ended: %q", r)
	}
}
