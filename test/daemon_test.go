package test

import (
	"bufio"
	"bytes"
	"context"
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
)

// daemonStartTimeout bounds how long a daemon may take to bind its listeners.
const daemonStartTimeout = 30 * time.Second

// daemon is a running `broker serve` process.
type daemon struct {
	t      testing.TB
	cmd    *exec.Cmd
	config string
	// IMAPAddr and SMTPAddr are the first listener of each protocol, ""
	// when the configuration has none.
	IMAPAddr string
	SMTPAddr string

	mu     sync.Mutex
	stderr bytes.Buffer
	logged chan struct{} // closed and replaced on every log line
	exited chan struct{}
	err    error
}

var (
	listeningRE = regexp.MustCompile(`msg=listening proto=(imap|smtp) addr=(\S+)`)
	// The daemon logs this once every listener has been logged.
	readyRE = regexp.MustCompile(`msg=ready(\s|$)`)
)

// startDaemon writes config to a file and runs `broker serve` on it until
// the test ends. Listeners should use port 0: the daemon logs what it
// bound, and startDaemon returns once it has logged every listener.
func startDaemon(t testing.TB, dir, config string) *daemon {
	t.Helper()
	return startDaemonBin(t, brokerBin, dir, config)
}

// startDaemonBin is startDaemon with another build of broker.
func startDaemonBin(t testing.TB, bin, dir, config string) *daemon {
	t.Helper()
	return startDaemonCmd(t, bin, dir, config, nil)
}

// startDaemonCmd is startDaemonBin with prepare, if not nil, called on the
// command before it starts: to set its environment or pass it files.
func startDaemonCmd(t testing.TB, bin, dir, config string, prepare func(*exec.Cmd)) *daemon {
	t.Helper()
	path := filepath.Join(dir, "broker.toml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, config: path, exited: make(chan struct{}), logged: make(chan struct{})}
	d.cmd = exec.Command(bin, "serve", "-config", path)
	if prepare != nil {
		prepare(d.cmd)
	}
	pr, pw := io.Pipe()
	d.cmd.Stderr = pw
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Only the scanner writes addrs until it closes ready.
	addrs := map[string]string{}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		started := false
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.stderr.WriteString(line + "\n")
			close(d.logged)
			d.logged = make(chan struct{})
			d.mu.Unlock()
			if started {
				continue
			}
			if m := listeningRE.FindStringSubmatch(line); m != nil && addrs[m[1]] == "" {
				addrs[m[1]] = m[2]
			} else if readyRE.MatchString(line) {
				started = true
				close(ready)
			}
		}
	}()
	go func() {
		d.err = d.cmd.Wait()
		pw.Close()
		close(d.exited)
	}()
	t.Cleanup(d.stop)
	select {
	case <-ready:
		d.IMAPAddr, d.SMTPAddr = addrs["imap"], addrs["smtp"]
	case <-d.exited:
		t.Fatalf("broker exited at start-up: %v\n%s", d.err, d.Log())
	case <-time.After(daemonStartTimeout):
		t.Fatalf("broker did not start listening in %v\n%s", daemonStartTimeout, d.Log())
	}
	return d
}

// Log returns everything the daemon wrote to stderr so far.
func (d *daemon) Log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// waitLog waits until the daemon has logged a line containing substr.
func (d *daemon) waitLog(substr string) string {
	d.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		d.mu.Lock()
		log, logged := d.stderr.String(), d.logged
		d.mu.Unlock()
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, substr) {
				return line
			}
		}
		select {
		case <-logged:
		case <-d.exited:
			d.t.Fatalf("broker exited before logging %q\n%s", substr, log)
		case <-timeout:
			d.t.Fatalf("broker did not log %q within 20s\n%s", substr, log)
		}
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.exited:
		if d.err != nil {
			d.t.Errorf("broker exited with %v\n%s", d.err, d.Log())
		}
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("broker did not stop on SIGINT within 30s\n%s", d.Log())
	}
}

// cli runs a broker subcommand against the daemon's config and returns its
// stdout; it fails the test on a non-zero exit.
func (d *daemon) cli(args ...string) string {
	d.t.Helper()
	out, errOut, err := runBroker(append(args, "-config", d.config)...)
	if err != nil {
		d.t.Fatalf("broker %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// addAppPassword issues an app password through the CLI and returns it.
func (d *daemon) addAppPassword(mailbox string) (id, password string) {
	d.t.Helper()
	out := strings.TrimSpace(d.cli("app-password", "add", mailbox, "-label", "test"))
	lines := strings.Split(out, "\n")
	password = lines[len(lines)-1]
	if m := regexp.MustCompile(`App password (\S+) for`).FindStringSubmatch(out); m != nil {
		id = m[1]
	}
	if len(password) != 32 || id == "" {
		d.t.Fatalf("app-password add printed %q; want a 32-character password last and its ID", out)
	}
	return id, password
}

func runBroker(args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, brokerBin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// writeFile writes data to dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// brokerConfig renders a one-app, one-account configuration.
func brokerConfig(stateDir, upstream, caFile, authority, tenant, clientID, secretFile, mailbox string) string {
	return fmt.Sprintf(`state_dir = %q

[imap]
listen = ["127.0.0.1:0"]
upstream = %q
upstream_ca_file = %q

[[app]]
name = "contoso"
tenant = %q
client_id = %q
client_secret_file = %q
authority = %q

[[account]]
mailbox = %q
app = "contoso"
flow = "client_credentials"
`, stateDir, upstream, caFile, tenant, clientID, secretFile, authority, mailbox)
}

var interruptSignal = os.Interrupt
