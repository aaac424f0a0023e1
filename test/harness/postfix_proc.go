package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

// writeFiles writes everything but master.cf, which depends on the port.
func (p *Postfix) writeFiles(opts PostfixOptions) (postfixConfData, error) {
	dv := opts.Dovecot
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
	for _, d := range []string{"conf", "queue"} {
		if err := os.Mkdir(filepath.Join(p.Dir, d), 0o755); err != nil {
			return conf, err
		}
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

func (p *Postfix) start(postfix, master string, conf postfixConfData, first bool) error {
	data, err := render(postfixMasterCf, conf)
	if err != nil {
		return err
	}
	confDir := filepath.Join(p.Dir, "conf")
	if err := writeSettled(filepath.Join(confDir, "master.cf"), data, 0o644); err != nil {
		return err
	}
	p.SubmissionAddr = conf.SubmissionAddr
	if first {
		// What "postfix start" does before it starts the master: check
		// the configuration and create the queue's directories with their
		// owners and modes.
		if out, err := exec.Command(postfix, "-c", confDir, "check").CombinedOutput(); err != nil {
			return fmt.Errorf("postfix check: %v\n%s", err, out)
		}
	}

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
	// process group, and the kernel ends it if the test binary dies before
	// its cleanup. -d keeps its stdout and stderr (errors before logging
	// starts) and skips its own setsid, which would fail.
	cmd := exec.Command(master, "-d", "-c", confDir)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = sysProcAttr()
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Setsid = false, true
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
	if err := p.waitReady(time.Now().Add(postfixStartTimeout)); err != nil {
		p.kill()
		return err
	}
	return nil
}

// waitReady waits until the submission port greets. The master binds it
// before it reports nothing we could wait on, so the port is polled.
func (p *Postfix) waitReady(deadline time.Time) error {
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return fmt.Errorf("postfix master exited: %v", p.cmd.ProcessState)
		default:
		}
		if lastErr = p.greet(deadline); lastErr == nil {
			return nil
		}
		select {
		case <-p.exited:
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("postfix not ready after %v: %v", postfixStartTimeout, lastErr)
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

// kill ends the instance's whole process group at once and waits until
// every process of it has exited.
func (p *Postfix) kill() {
	if p.cmd == nil {
		return
	}
	syscall.Kill(-p.pgid, syscall.SIGKILL)
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
