package test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

func TestConfigErrorsNameKeyAndLine(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		config string
		want   []string
	}{
		{"unknown key", "state_dir = \"" + dir + "\"\n\n[imap]\nlisten = [\"127.0.0.1:0\"]\nlisten_adress = \"x\"\n",
			[]string{"listen_adress", ":5"}},
		{"missing secret file", "state_dir = \"" + dir + "\"\n[[app]]\nname = \"a\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"" + clientID + "\"\nclient_secret_file = \"/nonexistent/secret\"\n",
			[]string{"client_secret_file", ":6", "/nonexistent/secret"}},
		{"syntax", "state_dir = \n", []string{":1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, "broker.toml", []byte(tt.config))
			_, stderr, err := runBroker("serve", "-config", path)
			if err == nil {
				t.Fatalf("serve with a bad config exited 0")
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("error %q does not name %q", stderr, w)
				}
			}
		})
	}
}

func TestSecondDaemonRefused(t *testing.T) {
	env := newSimEnv(t)
	_, stderr, err := runBroker("serve", "-config", env.Daemon.config)
	if err == nil {
		t.Fatal("a second daemon on the same state_dir exited 0")
	}
	if !strings.Contains(stderr, "in use by another broker process") {
		t.Fatalf("second daemon: got %q, want it to say the database is in use by another broker process", stderr)
	}
}

// TestDevMode runs the README's first command and the curl command it
// prints, exactly as a newcomer would, and checks that the SMTP proxy of
// the printed SMTP example greets.
func TestDevMode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, brokerBin, "serve", "-dev", "-dev-listen", "127.0.0.1:0", "-dev-smtp-listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(interruptSignal)
		cmd.Wait()
	}()
	curlRE := regexp.MustCompile(`^\s+(curl .*)$`)
	smtpRE := regexp.MustCompile(`^\s+.*curl .*'smtp://([^'/]+)'`)
	sc := bufio.NewScanner(stdout)
	var curl, smtpAddr string
	for sc.Scan() && (curl == "" || smtpAddr == "") {
		if m := curlRE.FindStringSubmatch(sc.Text()); m != nil && curl == "" {
			curl = m[1]
		} else if m := smtpRE.FindStringSubmatch(sc.Text()); m != nil {
			smtpAddr = m[1]
		}
	}
	if curl == "" || smtpAddr == "" {
		t.Fatalf("serve -dev printed no curl command for IMAP (%q) or SMTP (%q)", curl, smtpAddr)
	}
	greeting := smtpGreeting(t, smtpAddr)
	if !strings.HasPrefix(greeting, "220 ") {
		t.Fatalf("the printed SMTP example's %s greeted %q, want 220", smtpAddr, greeting)
	}
	out, err := exec.CommandContext(ctx, "sh", "-c", curl).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", curl, err, out)
	}
	for _, subject := range seededSubjects {
		if !strings.Contains(string(out), subject) {
			t.Fatalf("the printed curl command's output lacks %q:\n%s", subject, out)
		}
	}
}

// smtpGreeting returns the first line a server at addr sends.
func smtpGreeting(t *testing.T, addr string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the greeting of %s: %v (got %q)", addr, err, line)
	}
	fmt.Fprintf(conn, "QUIT\r\n")
	return strings.TrimRight(line, "\r\n")
}

func TestSIGHUPDoesNotStopDaemon(t *testing.T) {
	env := newSimEnv(t)
	if err := env.Daemon.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	env.Daemon.waitLog("msg=\"configuration reloaded\"")
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("LOGIN after SIGHUP: %v", err)
	}
}

// TestCLIAsRootKeepsDaemonOwnership: an administrator running the CLI as
// root before the daemon's first start must not leave it a database owned
// by root in the daemon user's state directory.
func TestCLIAsRootKeepsDaemonOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root, as CI does")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(state, uid, gid); err != nil {
		t.Fatal(err)
	}
	secret := writeFile(t, dir, "secret", []byte("s"))
	cert, err := m365sim.NewCert("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ca := writeFile(t, dir, "ca.pem", cert.CertPEM)
	cfg := writeFile(t, dir, "broker.toml", []byte(brokerConfig(state, "127.0.0.1:993", ca, "https://login.microsoftonline.com", tenant, clientID, secret, mailbox)))
	if _, stderr, err := runBroker("app-password", "add", "-config", cfg, mailbox); err != nil {
		t.Fatalf("app-password add: %v\n%s", err, stderr)
	}
	for _, name := range []string{"broker.db", "broker.key"} {
		info, err := os.Stat(filepath.Join(state, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Sys().(*syscall.Stat_t).Uid; int(got) != uid {
			t.Errorf("%s owner: got uid %d, want %d (the state directory's owner)", name, got, uid)
		}
	}
}
