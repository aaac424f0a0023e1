package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/mailbroker/broker/test/harness"
	"github.com/mailbroker/broker/test/m365sim"
	"github.com/mailbroker/broker/test/netem"
)

const (
	tenantDomain = "contoso.onmicrosoft.com"
	mailDomain   = "contoso.com"
	// audience is what Exchange's tokens carry and Dovecot requires.
	audience = "https://outlook.office.com"
	// wanDelay is each way of the forwarder: 30 ms of round trip, about
	// what an on-premises server sees to Exchange Online.
	wanDelay = 15 * time.Millisecond
	// wanRate is the forwarder's rate: 1 Gbit/s each way.
	wanRate = 125_000_000
	// loginClients is how many mailboxes the login loop spreads over:
	// one per client, below Dovecot's 10 connections per user and IP.
	loginClients = 10
)

var roles = []string{"IMAP.AccessAsApp", "SMTP.SendAsApp"}

func address(local string) string { return local + "@" + mailDomain }

var (
	fetchBox = address("fetch")
	sendBox  = address("send")
	sinkBox  = address("sink")
)

func loginBox(i int) string { return address(fmt.Sprintf("login%02d", i)) }

// account is one [[account]] of a broker, with an app registration of its
// own, so that Entra's count by client is a count by account.
type account struct {
	broker   string
	mailbox  string
	clientID string
	password string
}

// env is everything the cases share.
type env struct {
	r    *runner
	o    options
	root string // the module's directory
	bin  string // broker

	entra      *m365sim.Entra
	secret     string
	secretFile string
	directID   string
	token      string // the direct path's access token

	dovecot    *harness.Dovecot
	postfix    *harness.Postfix
	dovecotTLS *tls.Config
	postfixTLS *tls.Config
	imapWAN    *netem.Forwarder // to Dovecot's IMAP
	smtpWAN    *netem.Forwarder // to Postfix's submission

	loop     *brokerProc // upstreams on loopback
	wan      *brokerProc // upstreams behind the forwarders
	accounts []*account
	verify   *verifier
	fetchMsg *message // in fetch's INBOX
	fetchUID uint32
}

// newGUID makes a random version 4 UUID, as Entra's client IDs are.
func newGUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// moduleRoot is the directory of broker's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside broker's module: run from its directory")
	}
	return filepath.Dir(mod), nil
}

// buildBroker builds the binary as `make build` does.
func buildBroker(r *runner, root string) (string, error) {
	bin := filepath.Join(r.dir, "broker")
	describe := exec.Command("git", "describe", "--tags", "--always", "--dirty")
	describe.Dir = root
	version := firstLine(describe.Output())
	if version == "" {
		version = "dev"
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version="+version, "-o", bin, "./cmd/broker")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building broker: %v\n%s", err, out)
	}
	return bin, nil
}

// startEntra starts the identity platform with the direct path's app,
// which has FullAccess to every mailbox, and fetches its token.
func (e *env) startEntra() error {
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		return err
	}
	e.r.Cleanup(entra.Close)
	e.entra = entra
	entra.AddTenant(tenantDomain)
	e.secret = "perf-" + newGUID()
	e.secretFile = filepath.Join(e.r.dir, "client.secret")
	if err := os.WriteFile(e.secretFile, []byte(e.secret), 0o600); err != nil {
		return err
	}
	e.directID = newGUID()
	entra.AddApp(m365sim.App{Tenant: tenantDomain, ClientID: e.directID, Secret: e.secret, Roles: roles})
	cc := clientcredentials.Config{
		ClientID: e.directID, ClientSecret: e.secret,
		TokenURL:  entra.URL() + "/" + tenantDomain + "/oauth2/v2.0/token",
		Scopes:    []string{"https://outlook.office365.com/.default"},
		AuthStyle: oauth2.AuthStyleInParams,
	}
	tok, err := cc.Token(context.Background())
	if err != nil {
		return fmt.Errorf("direct path's token: %v", err)
	}
	e.token = tok.AccessToken
	return nil
}

// startDovecot starts Dovecot with the benchmark's mailboxes; the harness
// panics with a setupError on failure.
func (e *env) startDovecot() {
	tid, _ := e.entra.TenantID(tenantDomain)
	boxes := []string{fetchBox, sendBox, sinkBox}
	for i := range loginClients {
		boxes = append(boxes, loginBox(i))
	}
	e.dovecot = harness.StartDovecot(e.r, harness.DovecotOptions{
		KeyID:        e.entra.KeyID(),
		PublicKeyPEM: e.entra.PublicKeyPEM(),
		Issuers:      []string{e.entra.Issuer(tid)},
		Audience:     audience,
		Mailboxes:    boxes,
	})
	e.dovecotTLS = e.dovecot.TLSConfig()
}

func (e *env) startPostfix() {
	e.postfix = harness.StartPostfix(e.r, harness.PostfixOptions{Dovecot: e.dovecot})
	e.postfixTLS = e.postfix.TLSConfig()
}

// startForwarders puts Dovecot's IMAP and Postfix's submission behind the
// emulated WAN link.
func (e *env) startForwarders() error {
	link := netem.Link{Delay: wanDelay, Rate: wanRate}
	var err error
	if e.imapWAN, err = netem.Listen(e.dovecot.IMAPAddr, link); err != nil {
		return err
	}
	e.r.Cleanup(func() { e.imapWAN.Close() })
	if e.postfix != nil {
		if e.smtpWAN, err = netem.Listen(e.postfix.SubmissionAddr, link); err != nil {
			return err
		}
		e.r.Cleanup(func() { e.smtpWAN.Close() })
	}
	return nil
}

// brokerSpec is a broker to start.
type brokerSpec struct {
	name             string
	imapUp, imapCA   string
	smtpUp, smtpCA   string // "": no SMTP
	mailboxes        []string
	limits, imapKeys string // extra TOML of [limits] and [imap]
}

// startBroker registers an app per account, starts broker and issues an
// app password per account.
func (e *env) startBroker(s brokerSpec) (*brokerProc, error) {
	dir := filepath.Join(e.r.dir, s.name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, "state_dir = %q\n", filepath.Join(dir, "state"))
	if s.limits != "" {
		fmt.Fprintf(&conf, "\n[limits]\n%s\n", s.limits)
	}
	fmt.Fprintf(&conf, "\n[imap]\nlisten = [\"127.0.0.1:0\"]\nupstream = %q\nupstream_ca_file = %q\n%s\n", s.imapUp, s.imapCA, s.imapKeys)
	if s.smtpUp != "" {
		fmt.Fprintf(&conf, "\n[smtp]\nlisten = [\"127.0.0.1:0\"]\nupstream = %q\nupstream_ca_file = %q\n", s.smtpUp, s.smtpCA)
	}
	var accts []*account
	for i, mb := range s.mailboxes {
		a := &account{broker: s.name, mailbox: mb, clientID: newGUID()}
		e.entra.AddApp(m365sim.App{Tenant: tenantDomain, ClientID: a.clientID, Secret: e.secret, Roles: roles, Mailboxes: []string{mb}})
		fmt.Fprintf(&conf, "\n[[app]]\nname = \"app%d\"\ntenant = %q\nclient_id = %q\nclient_secret_file = %q\nauthority = %q\n", i, tenantDomain, a.clientID, e.secretFile, e.entra.URL())
		fmt.Fprintf(&conf, "\n[[account]]\nmailbox = %q\napp = \"app%d\"\nflow = \"client_credentials\"\n", mb, i)
		accts = append(accts, a)
	}
	b, err := startBroker(e.r, s.name, e.bin, dir, conf.String())
	if err != nil {
		return nil, err
	}
	for _, a := range accts {
		if a.password, err = b.addAppPassword(a.mailbox); err != nil {
			return nil, err
		}
	}
	e.accounts = append(e.accounts, accts...)
	return b, nil
}

func (e *env) password(b *brokerProc, mailbox string) string {
	for _, a := range e.accounts {
		if a.broker == b.name && a.mailbox == mailbox {
			return a.password
		}
	}
	return ""
}

// The two paths' logins: straight to the upstream (addr: Dovecot's,
// Postfix's or a forwarder's) with XOAUTH2, or through broker with the
// app password.

func (e *env) directIMAP(addr, mailbox string) (*imapConn, error) {
	c, err := dialIMAP(addr, e.dovecotTLS)
	if err != nil {
		return nil, err
	}
	if err := c.xoauth2(mailbox, e.token); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (e *env) brokerIMAP(b *brokerProc, mailbox string) (*imapConn, error) {
	c, err := dialIMAP(b.IMAPAddr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.login(mailbox, e.password(b, mailbox)); err != nil {
		c.Close()
		return nil, fmt.Errorf("LOGIN through broker: %v", err)
	}
	return c, nil
}

func (e *env) directSMTP(addr, mailbox string) (*smtpConn, error) {
	c, err := dialSMTP(addr)
	if err != nil {
		return nil, err
	}
	_, err = c.cmd(250, "EHLO perf.test")
	if err == nil {
		err = c.startTLS(e.postfixTLS)
	}
	if err == nil {
		err = c.authXOAUTH2(mailbox, e.token)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (e *env) brokerSMTP(b *brokerProc, mailbox string) (*smtpConn, error) {
	c, err := dialSMTP(b.SMTPAddr)
	if err != nil {
		return nil, err
	}
	_, err = c.cmd(250, "EHLO perf.test")
	if err == nil {
		err = c.authPlain(mailbox, e.password(b, mailbox))
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("through broker: %v", err)
	}
	return c, nil
}

var uidNextRE = regexp.MustCompile(`\[UIDNEXT (\d+)\]`)

// selectInbox selects INBOX and returns its message count and next UID.
func selectInbox(c *imapConn) (count int, uidNext uint32, err error) {
	untagged, err := c.command("SELECT INBOX", nil)
	if err != nil {
		return 0, 0, fmt.Errorf("SELECT INBOX: %v", err)
	}
	for _, l := range untagged {
		if m := uidNextRE.FindStringSubmatch(l); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 32)
			uidNext = uint32(n)
		}
	}
	return max(exists(untagged), 0), uidNext, nil
}

// startVerifier opens the session that checks deliveries to the sink.
func (e *env) startVerifier() error {
	c, err := e.directIMAP(e.dovecot.IMAPAddr, sinkBox)
	if err != nil {
		return fmt.Errorf("sink: %v", err)
	}
	e.r.Cleanup(func() { c.Close() })
	n, next, err := selectInbox(c)
	if err != nil {
		return err
	}
	e.verify = newVerifier(c, n, max(next, 1)-1)
	return nil
}

// storeFetchMessage appends the message the FETCH cases read.
func (e *env) storeFetchMessage() error {
	if e.fetchMsg != nil {
		return nil
	}
	m := newMessage("perf-fetch-"+newGUID()+"@"+mailDomain, fetchBox, fetchBox, fetchSize)
	c, err := e.directIMAP(e.dovecot.IMAPAddr, fetchBox)
	if err != nil {
		return err
	}
	defer c.logout()
	uid, err := c.appendMessage(m.raw)
	if err != nil {
		return err
	}
	e.fetchMsg, e.fetchUID = m, uid
	return nil
}
