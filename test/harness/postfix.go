package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// PostfixOptions configures a Postfix submission server in front of a
// Dovecot.
type PostfixOptions struct {
	Dovecot *Dovecot // required: SASL via Dovecot.AuthSocket, delivery to Dovecot.LMTPAddr
	Domains []string // virtual mailbox domains; default: the domains of Dovecot's mailboxes

	// SenderLogins maps a login (the XOAUTH2 user) to the envelope senders
	// it may use, imitating Exchange's send-as check
	// (smtpd_sender_login_maps with reject_sender_login_mismatch). Nil:
	// each of Dovecot's mailboxes may send only as itself; otherwise it is
	// the whole map. Logins and senders are compared without case.
	SenderLogins map[string][]string

	MessageSizeLimit int64 // message_size_limit; default 157286400 (Exchange's 150 MiB)
}

// Postfix is a running private Postfix playing smtp.office365.com:587:
// STARTTLS required, then AUTH XOAUTH2 checked by Dovecot, and delivery to
// Dovecot over LMTP.
//
// The send-as check (reject_sender_login_mismatch) is a sender restriction,
// which Postfix evaluates at RCPT TO: a MAIL FROM the login may not use is
// answered 250 and every RCPT TO after it 553 5.7.1.
type Postfix struct {
	SubmissionAddr string // 127.0.0.1:port, STARTTLS required, AUTH only after it
	CACertPEM      []byte // trust root for SubmissionAddr's certificate
	CAFile         string // CACertPEM in a file
	Dir            string

	cmd    *exec.Cmd
	exited chan struct{} // closed when every process of the instance has exited
	pgid   int

	watchdog     *exec.Cmd
	watchdogPipe *os.File
}

const (
	// postfixStartTimeout bounds the wait for the first greeting.
	postfixStartTimeout = 30 * time.Second
	// defaultMessageSizeLimit is Exchange Online's largest message.
	defaultMessageSizeLimit = 150 << 20
)

// StartPostfix starts a private Postfix and, at the test's cleanup, stops it
// and kills whatever of it is left.
func StartPostfix(t TB, opts PostfixOptions) *Postfix {
	t.Helper()
	if opts.Dovecot == nil {
		t.Fatalf("StartPostfix: Dovecot is required")
	}
	if os.Geteuid() != 0 {
		t.Fatalf("postfix harness must run as root: Postfix drops privileges to its own user")
	}
	master, err := findPostfix()
	if err != nil {
		t.Fatalf("%v", err)
	}
	// A short path, as for Dovecot: Postfix's unix sockets live below it.
	dir, err := os.MkdirTemp("", "bkpf")
	if err != nil {
		t.Fatalf("StartPostfix: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &Postfix{Dir: dir}
	conf, err := p.writeFiles(opts)
	if err != nil {
		t.Fatalf("StartPostfix: %v", err)
	}
	t.Cleanup(p.Stop)
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(1)
		if err != nil {
			t.Fatalf("StartPostfix: %v", err)
		}
		conf.SubmissionAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
		err = p.start(master, conf)
		if err == nil {
			return p
		}
		if attempt < 3 && p.bindFailed() {
			continue
		}
		t.Fatalf("StartPostfix: %v\n%s", err, p.LogTail())
	}
}

// findPostfix returns the master daemon's path.
func findPostfix() (string, error) {
	postconf, err := exec.LookPath("postconf")
	if err != nil {
		// /usr/sbin is not on a normal user's PATH.
		postconf = "/usr/sbin/postconf"
		if _, err := os.Stat(postconf); err != nil {
			return "", errors.New("postfix not installed: DEBIAN_FRONTEND=noninteractive apt-get install postfix")
		}
	}
	out, err := exec.Command(postconf, "-dh", "daemon_directory").Output()
	if err != nil {
		return "", fmt.Errorf("postconf -dh daemon_directory: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "master"), nil
}

// LogTail returns the end of Postfix's maillog_file (and of the master's
// stderr, where errors before logging starts go), for failure messages.
func (p *Postfix) LogTail() string { return logTail(p.Dir, "postfix ", "stderr.log", "maillog") }
