package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

// writeFiles writes everything but master.cf, which depends on the port.
func (p *Postfix) writeFiles(opts PostfixOptions) (postfixConfData, error) {
	dv := opts.Dovecot
	if err := checkAuthSocket(dv.AuthSocket); err != nil {
		return postfixConfData{}, err
	}
	conf := postfixConfData{
		Dir: p.Dir, Hostname: postfixHostname,
		LMTPAddr: dv.LMTPAddr, AuthSocket: dv.AuthSocket,
		MessageSizeLimit: opts.MessageSizeLimit,
	}
	if conf.MessageSizeLimit == 0 {
		conf.MessageSizeLimit = defaultMessageSizeLimit
	}
	domains := opts.Domains
	if domains == nil {
		domains = mailboxDomains(dv.mailboxes)
	}
	if len(domains) == 0 {
		return conf, errors.New("no virtual mailbox domains: give Domains or Dovecot mailboxes")
	}
	for _, d := range domains {
		if err := checkMapWord(d); err != nil {
			return conf, fmt.Errorf("option Domains: %w", err)
		}
	}
	conf.Domains = strings.ToLower(strings.Join(domains, " "))

	cert, err := m365sim.NewCert("127.0.0.1", "localhost")
	if err != nil {
		return conf, err
	}
	p.CACertPEM = cert.CertPEM
	p.CAFile = filepath.Join(p.Dir, "conf", "cert.pem")
	mainCf, err := render(postfixMainCf, conf)
	if err != nil {
		return conf, err
	}
	boxes, senders, err := postfixMaps(dv.mailboxes, opts.SenderLogins)
	if err != nil {
		return conf, err
	}
	// Postfix's daemons run as postfix and need to reach conf and queue.
	if err := os.Chmod(p.Dir, 0o755); err != nil {
		return conf, err
	}
	if err := os.Mkdir(filepath.Join(p.Dir, "conf"), 0o755); err != nil {
		return conf, err
	}
	if err := makeQueue(p.Dir); err != nil {
		return conf, err
	}
	files := []file{
		{"conf/main.cf", mainCf, 0o644},
		{"conf/mailboxes", boxes, 0o644},
		{"conf/senders", senders, 0o644},
		{"conf/cert.pem", cert.CertPEM, 0o644},
		// smtpd reads it as root, before it drops privileges.
		{"conf/key.pem", cert.KeyPEM, 0o600},
	}
	for _, f := range files {
		if err := writeSettled(filepath.Join(p.Dir, f.name), f.data, f.mode); err != nil {
			return conf, err
		}
	}
	return conf, nil
}

// postfixDirs are the directories of the queue and data_directory, with
// owner, group and mode as in Postfix's postfix-files. "postfix check" would
// create them, but it runs some seventy processes to do so: a fifth of a
// second on an idle machine, seconds on a busy one.
var postfixDirs = []struct {
	name         string
	owner, group string // "" for root
	mode         os.FileMode
}{
	{"data", "postfix", "", 0o700},
	{"queue", "", "", 0o755},
	{"queue/active", "postfix", "", 0o700},
	{"queue/bounce", "postfix", "", 0o700},
	{"queue/corrupt", "postfix", "", 0o700},
	{"queue/defer", "postfix", "", 0o700},
	{"queue/deferred", "postfix", "", 0o700},
	{"queue/flush", "postfix", "", 0o700},
	{"queue/hold", "postfix", "", 0o700},
	{"queue/incoming", "postfix", "", 0o700},
	{"queue/private", "postfix", "", 0o700},
	{"queue/maildrop", "postfix", "postdrop", 0o730},
	{"queue/public", "postfix", "postdrop", 0o710},
	{"queue/pid", "", "", 0o755},
	{"queue/saved", "postfix", "", 0o700},
	{"queue/trace", "postfix", "", 0o700},
}

func makeQueue(dir string) error {
	for _, d := range postfixDirs {
		uid, gid := 0, 0
		if d.owner != "" {
			u, err := user.Lookup(d.owner)
			if err != nil {
				return err
			}
			uid, _ = strconv.Atoi(u.Uid)
		}
		if d.group != "" {
			g, err := user.LookupGroup(d.group)
			if err != nil {
				return err
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
		p := filepath.Join(dir, d.name)
		if err := os.Mkdir(p, d.mode); err != nil {
			return err
		}
		// Mkdir's mode is masked by the umask.
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
		if err := os.Chown(p, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// checkAuthSocket makes sure that smtpd, running as postfix, may connect to
// Dovecot's auth socket: Dovecot gives it to postfix only if that user
// existed when it started.
func checkAuthSocket(path string) error {
	u, err := user.Lookup("postfix")
	if err != nil {
		return fmt.Errorf("no postfix user: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("auth socket of Dovecot: %v", err)
	}
	if uid := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)); uid != u.Uid && fi.Mode().Perm()&0o006 != 0o006 {
		return fmt.Errorf("auth socket %s of Dovecot is owned by uid %s, not postfix (%s): was Dovecot started before Postfix was installed?", path, uid, u.Uid)
	}
	return nil
}

// writeSettled writes a file dated a minute ago. Postfix rereads main.cf and
// texthash maps modified in the last second or two every 300 ms until they
// look settled, which would add two seconds to the start and to the first
// session.
func writeSettled(name string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(name, data, mode); err != nil {
		return err
	}
	past := time.Now().Add(-time.Minute)
	return os.Chtimes(name, past, past)
}

func (p *Postfix) start(master string, conf postfixConfData) error {
	data, err := render(postfixMasterCf, conf)
	if err != nil {
		return err
	}
	confDir := filepath.Join(p.Dir, "conf")
	if err := writeSettled(filepath.Join(confDir, "master.cf"), data, 0o644); err != nil {
		return err
	}
	p.SubmissionAddr = conf.SubmissionAddr
	stderr, err := os.Create(filepath.Join(p.Dir, "stderr.log"))
	if err != nil {
		return err
	}
	// Every process of the instance inherits the master's stdout and
	// stderr: a pipe whose end says that all of them have exited.
	pr, pw, err := os.Pipe()
	if err != nil {
		stderr.Close()
		return err
	}
	// The master in the foreground as our child, in a session of its own,
	// rather than daemonised by "postfix start": its children stay in its
	// process group, and we see it exit. -d keeps its stdout and stderr
	// (errors before logging starts) and skips its own setsid, which would
	// fail.
	cmd := exec.Command(master, "-d", "-c", confDir)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		stderr.Close()
		return err
	}
	p.cmd, p.pgid, p.exited = cmd, cmd.Process.Pid, make(chan struct{})
	go func() {
		io.Copy(stderr, pr)
		pr.Close()
		stderr.Close()
		cmd.Wait()
		close(p.exited)
	}()
	if err := p.watch(); err != nil {
		p.kill()
		return err
	}
	if err := waitReady("postfix master", p.cmd, p.exited, time.Now().Add(postfixStartTimeout), p.greet); err != nil {
		p.kill()
		return err
	}
	return nil
}

func (p *Postfix) greet(deadline time.Time) error {
	dialer := &net.Dialer{Deadline: deadline, Timeout: time.Second}
	conn, err := dialer.Dial("tcp", p.SubmissionAddr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "220 ") {
		return fmt.Errorf("unexpected greeting %q", line)
	}
	return nil
}

// Stop stops Postfix as "postfix stop" does, by a SIGTERM to the master,
// which passes it on to its children, then kills whatever of the instance
// is left. Stopping twice is harmless.
func (p *Postfix) Stop() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
	p.kill()
}

// watch starts a watchdog that kills the instance if the test binary ends
// without its cleanup (a test timeout's panic, SIGKILL): the parent-death
// signal Dovecot's master gets does not hold for Postfix's, which changes
// its effective uid while it starts. The watchdog reads a pipe only this
// process holds open, and kills the master's process group at EOF.
func (p *Postfix) watch() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command("/bin/sh", "-c", `read x; kill -KILL -"$1"`, "watchdog", strconv.Itoa(p.pgid))
	cmd.Stdin = r
	// Its own group: a ^C to the test's group must not end it first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return err
	}
	p.watchdog, p.watchdogPipe = cmd, w
	return nil
}

// kill ends the instance's whole process group at once and waits until
// every process of it has exited.
func (p *Postfix) kill() {
	if p.cmd == nil {
		return
	}
	// The watchdog first: once the group is gone, its id may be reused.
	if p.watchdog != nil {
		p.watchdog.Process.Kill()
		p.watchdog.Wait()
		p.watchdogPipe.Close()
		p.watchdog = nil
	}
	select {
	case <-p.exited:
	default:
		syscall.Kill(-p.pgid, syscall.SIGKILL)
	}
	<-p.exited
	p.cmd = nil
}

// bindFailed tells whether the last start lost its port to another process.
func (p *Postfix) bindFailed() bool {
	for _, name := range []string{"stderr.log", "maillog"} {
		data, _ := os.ReadFile(filepath.Join(p.Dir, name))
		if strings.Contains(string(data), "Address already in use") {
			return true
		}
	}
	return false
}
