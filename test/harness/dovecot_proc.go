package harness

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func (d *Dovecot) start(bin string, conf dovecotConfData) error {
	data, err := render(dovecotConf, conf)
	if err != nil {
		return err
	}
	confPath := filepath.Join(d.Dir, "dovecot.conf")
	if err := os.WriteFile(confPath, data, 0o644); err != nil {
		return err
	}
	d.IMAPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(conf.IMAPPort))
	d.LMTPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(conf.LMTPPort))
	if conf.POP3Port != 0 {
		d.POP3Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(conf.POP3Port))
	}

	// Errors before the log is open (a bad config, a port taken) go to
	// stderr.
	stderr, err := os.Create(filepath.Join(d.Dir, "stderr.log"))
	if err != nil {
		return err
	}
	defer stderr.Close()
	// In the foreground as our child rather than daemonised: the kernel
	// then ends it even if the test binary dies before its cleanup.
	cmd := exec.Command(bin, "-F", "-c", confPath)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	d.cmd, d.pgid, d.exited = cmd, cmd.Process.Pid, make(chan struct{})
	go func() {
		cmd.Wait()
		close(d.exited)
	}()
	if err := waitReady("dovecot", d.cmd, d.exited, time.Now().Add(dovecotStartTimeout), d.greet); err != nil {
		d.kill()
		return err
	}
	return nil
}

func (d *Dovecot) greet(deadline time.Time) error {
	dialer := &net.Dialer{Deadline: deadline, Timeout: time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", d.IMAPAddr, d.TLSConfig())
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("unexpected greeting %q", line)
	}
	return nil
}

// Stop shuts Dovecot down as on a server restart; its sessions are closed
// without a BYE. It waits for every process of the instance to end, which
// takes about a second. Stopping twice is harmless.
func (d *Dovecot) Stop() error {
	if d.cmd == nil {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		err = errors.New("dovecot ignored SIGTERM for 10s, killed")
	}
	d.kill()
	return err
}

// kill ends the instance's whole process group at once, children the
// master may have left behind included.
func (d *Dovecot) kill() {
	if d.cmd == nil {
		return
	}
	syscall.Kill(-d.pgid, syscall.SIGKILL)
	<-d.exited
	d.cmd = nil
}

// bindFailed tells whether the last start lost a port to another process.
func (d *Dovecot) bindFailed() bool {
	data, _ := os.ReadFile(filepath.Join(d.Dir, "stderr.log"))
	return strings.Contains(string(data), "Address already in use")
}
