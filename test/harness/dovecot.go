package harness

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DovecotOptions configures the JWT validation of a Dovecot upstream.
type DovecotOptions struct {
	KeyID        string   // the JWT header kid
	PublicKeyPEM []byte   // RSA public key, PKIX "PUBLIC KEY" PEM
	Issuers      []string // e.g. "https://sts.windows.net/<tenant-id>/"
	Audience     string   // required aud, e.g. "https://outlook.office.com"; empty: any
	Mailboxes    []string // users that exist, e.g. "support@contoso.com"

	// Delegates maps a mailbox (one of Mailboxes) to the users with
	// FullAccess to it, as for a shared mailbox in Exchange: a token whose
	// upn is a delegate opens the mailbox with XOAUTH2 user=mailbox. Over
	// Postfix, whose SASL login is then the mailbox, it sends as the
	// mailbox.
	Delegates map[string][]string

	// AuthorizedParties lists the azp claims tokens may carry. Dovecot
	// looks the key up under the token's azp ("default" without one), so
	// v2.0 tokens, which have azp, need it; Entra's v1.0 tokens for
	// Exchange carry appid instead.
	AuthorizedParties []string

	// POP3 also serves POP3 with implicit TLS on POP3Addr, with the same
	// XOAUTH2 validation as IMAP. It needs Debian's dovecot-pop3d.
	POP3 bool

	// ReuseLoginProcesses runs Dovecot's login processes in its
	// high-performance mode (service_count = 0): one process serves many
	// connections, so TLS sessions resume across them, as a large
	// service's do. By default each connection gets a process of its own,
	// whose ticket keys die with it.
	ReuseLoginProcesses bool
}

// Dovecot is a running private Dovecot instance: IMAP (and, with
// DovecotOptions.POP3, POP3) with implicit TLS accepting only XOAUTH2 with
// locally validated JWTs, and LMTP for delivery.
type Dovecot struct {
	IMAPAddr   string // 127.0.0.1:port, implicit TLS
	LMTPAddr   string // 127.0.0.1:port
	POP3Addr   string // 127.0.0.1:port, implicit TLS; with DovecotOptions.POP3
	AuthSocket string // auth client socket for Postfix's smtpd_sasl_type = dovecot
	CACertPEM  []byte // trust root for IMAPAddr and POP3Addr
	CAFile     string // CACertPEM in a file
	Dir        string

	cmd       *exec.Cmd
	exited    chan struct{}
	pgid      int
	mailboxes []string // lower case, for Postfix's maps
}

// dovecotStartTimeout bounds the wait for the first IMAP greeting.
const dovecotStartTimeout = 30 * time.Second

// StartDovecot starts a private Dovecot and, at the test's cleanup, kills it
// with every process it started.
func StartDovecot(t TB, opts DovecotOptions) *Dovecot {
	t.Helper()
	bin, err := findDovecot()
	if err != nil {
		t.Fatalf("%v", err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("dovecot harness must run as root: Dovecot drops privileges to its own users")
	}
	if opts.POP3 {
		if _, err := os.Stat(dovecotPOP3); err != nil {
			t.Fatalf("dovecot POP3 not installed (%s): apt-get install dovecot-pop3d", dovecotPOP3)
		}
	}
	if len(opts.Issuers) == 0 || opts.KeyID == "" || len(opts.PublicKeyPEM) == 0 {
		t.Fatalf("StartDovecot: KeyID, PublicKeyPEM and Issuers are required")
	}
	// A short path: unix sockets live below it, and their paths are limited
	// to ~107 bytes.
	dir, err := os.MkdirTemp("", "bkdv")
	if err != nil {
		t.Fatalf("StartDovecot: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Dovecot{Dir: dir, AuthSocket: filepath.Join(dir, "run", "auth-client-ext")}
	for _, m := range opts.Mailboxes {
		d.mailboxes = append(d.mailboxes, strings.ToLower(m))
	}
	conf, err := d.writeFiles(opts)
	if err != nil {
		t.Fatalf("StartDovecot: %v", err)
	}
	// Killed rather than stopped: Dovecot's master takes a second to shut
	// down, and nothing of it is kept.
	t.Cleanup(d.kill)
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(3)
		if err != nil {
			t.Fatalf("StartDovecot: %v", err)
		}
		conf.IMAPPort, conf.LMTPPort = ports[0], ports[1]
		if opts.POP3 {
			conf.POP3Port = ports[2]
		}
		err = d.start(bin, conf)
		if err == nil {
			return d
		}
		if attempt < 3 && d.bindFailed() {
			continue
		}
		t.Fatalf("StartDovecot: %v\n%s", err, d.LogTail())
	}
}

// dovecotPOP3 is the POP3 server binary of Debian's dovecot-pop3d.
const dovecotPOP3 = "/usr/lib/dovecot/pop3"

func findDovecot() (string, error) {
	if p, err := exec.LookPath("dovecot"); err == nil {
		return p, nil
	}
	// /usr/sbin is not on a normal user's PATH.
	if _, err := os.Stat("/usr/sbin/dovecot"); err == nil {
		return "/usr/sbin/dovecot", nil
	}
	return "", errors.New("dovecot not installed: apt-get install dovecot-imapd dovecot-lmtpd")
}

// LogTail returns the end of Dovecot's logs, for failure messages.
func (d *Dovecot) LogTail() string { return logTail(d.Dir, "", "stderr.log", "dovecot.log") }
