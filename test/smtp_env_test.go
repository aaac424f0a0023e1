package test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/test/m365sim"
)

// smtpWait bounds waiting for an upstream event (a message recorded, a
// delivery seen through IDLE).
const smtpWait = 20 * time.Second

// smtpRoles are the application permissions an app needs for IMAP and SMTP.
var smtpRoles = []string{"IMAP.AccessAsApp", "SMTP.SendAsApp"}

// smtpBrokerConfig renders a one-app, one-account configuration with both
// an [imap] and an [smtp] section. smtpExtra holds more [smtp] keys; the
// SMTP listener is 127.0.0.1:0 unless it has a listen key.
func smtpBrokerConfig(stateDir, imapUpstream, imapCA, smtpUpstream, smtpCA, authority, secretFile, smtpExtra string) string {
	if !strings.Contains(smtpExtra, "listen =") {
		smtpExtra = `listen = ["127.0.0.1:0"]` + "\n" + smtpExtra
	}
	return brokerConfig(stateDir, imapUpstream, imapCA, authority, tenant, clientID, secretFile, mailbox) + fmt.Sprintf(`
[smtp]
upstream = %q
upstream_ca_file = %q
%s
`, smtpUpstream, smtpCA, smtpExtra)
}

// smtpSimOptions shape a smtpSimEnv.
type smtpSimOptions struct {
	// SMTP configures the simulated Exchange submission service.
	SMTP m365sim.SMTPOptions
	// DeliverToIMAP: accepted messages land in the simulated IMAP INBOX
	// (the simulator then keeps every message whole).
	DeliverToIMAP bool
	// Config is extra [smtp] keys, e.g. `allow_unauthenticated_as = "…"`;
	// without a listen key, SMTP listens on 127.0.0.1:0.
	Config string
	// Bin is the broker binary; "" is the -race build.
	Bin string
	// App changes the app as registered in Entra, to stage an
	// administrator's mistake.
	App func(*m365sim.App)
	// Entra, if set, is called before the daemon starts, e.g. to make the
	// identity platform fail from the first request.
	Entra func(*m365sim.Entra)
	// Upstream and UpstreamCA replace the simulator's address and
	// certificate in broker's [smtp] section.
	Upstream   string
	UpstreamCA []byte
}

// smtpSimEnv is a broker daemon with IMAP and SMTP in front of the
// simulated Microsoft 365.
type smtpSimEnv struct {
	Entra    *m365sim.Entra
	IMAP     *m365sim.IMAP
	SMTP     *m365sim.SMTP
	Daemon   *daemon
	Password string // an app password for mailbox
	Secret   string // the app's client secret
}

func newSMTPSimEnv(t testing.TB, o smtpSimOptions) *smtpSimEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &smtpSimEnv{Entra: entra, Secret: "Zx8Q~smtp.secret-value_0123456789abcdefXYZ"}
	entra.AddTenant(tenant)
	app := m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: env.Secret,
		Roles: smtpRoles, Mailboxes: []string{mailbox},
	}
	if o.App != nil {
		o.App(&app)
	}
	entra.AddApp(app)
	if o.Entra != nil {
		o.Entra(entra)
	}
	if env.IMAP, err = m365sim.NewIMAP(entra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.IMAP.Close() })
	if err := env.IMAP.AddMailbox(mailbox); err != nil {
		t.Fatal(err)
	}
	if o.DeliverToIMAP {
		o.SMTP.IMAP = env.IMAP
	}
	if env.SMTP, err = m365sim.NewSMTP(entra, o.SMTP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.SMTP.Close() })
	dir := t.TempDir()
	imapCA := writeFile(t, dir, "imap-ca.pem", env.IMAP.CACertPEM())
	upstream, upstreamCA := env.SMTP.Addr(), env.SMTP.CACertPEM()
	if o.Upstream != "" {
		upstream = o.Upstream
	}
	if o.UpstreamCA != nil {
		upstreamCA = o.UpstreamCA
	}
	smtpCA := writeFile(t, dir, "smtp-ca.pem", upstreamCA)
	secret := writeFile(t, dir, "client.secret", []byte(env.Secret+"\n"))
	cfg := smtpBrokerConfig(dir+"/state", env.IMAP.Addr(), imapCA, upstream, smtpCA, entra.URL(), secret, o.Config)
	bin := o.Bin
	if bin == "" {
		bin = brokerBin
	}
	env.Daemon = startDaemonBin(t, bin, dir, cfg)
	if env.Daemon.SMTPAddr == "" {
		t.Fatalf("daemon logged no SMTP listener\n%s", env.Daemon.Log())
	}
	_, env.Password = env.Daemon.addAppPassword(mailbox)
	return env
}

// waitMessages waits for the simulator to have accepted n messages.
func (env *smtpSimEnv) waitMessages(t testing.TB, n int) []m365sim.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), smtpWait)
	defer cancel()
	msgs, err := env.SMTP.WaitMessages(ctx, n)
	if err != nil {
		t.Fatalf("simulated Exchange accepted %d messages within %v, want %d\n%s",
			len(env.SMTP.Messages()), smtpWait, n, env.Daemon.Log())
	}
	return msgs
}

// dialSMTP connects a go-smtp client to addr and authenticates with AUTH
// PLAIN.
func dialSMTP(t testing.TB, addr, user, password string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Auth(sasl.NewPlainClient("", user, password)); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	return c
}

// smtpReply returns the reply of an SMTP error: code 0 for nil, -1 for an
// error that is no SMTP reply.
func smtpReply(err error) (code int, enhanced smtp.EnhancedCode, text string) {
	var e *smtp.SMTPError
	switch {
	case err == nil:
		return 0, smtp.EnhancedCode{}, ""
	case errors.As(err, &e):
		return e.Code, e.EnhancedCode, e.Message
	}
	return -1, smtp.EnhancedCode{}, err.Error()
}

// smtpMessage builds a CRLF message whose body has dot-stuffing
// candidates, an empty line, trailing spaces and a long line.
func smtpMessage(subject, messageID string) string {
	return "From: Support <" + mailbox + ">\r\n" +
		"To: <" + mailbox + ">\r\n" +
		"Subject: " + subject + "\r\n" +
		"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
		"Message-ID: <" + messageID + ">\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=us-ascii\r\n" +
		"\r\n" +
		"hello\r\n" +
		".a line starting with a dot\r\n" +
		"..and one with two\r\n" +
		".\r\n" +
		"\r\n" +
		"trailing spaces  \r\n" +
		strings.Repeat("long ", 190) + "\r\n" +
		"bye\r\n"
}

// rawSMTP is an SMTP client speaking exactly the bytes a test writes.
type rawSMTP struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

// dialRawSMTP connects to addr and reads the greeting.
func dialRawSMTP(t testing.TB, addr string) *rawSMTP {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(rawTimeout))
	c := &rawSMTP{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.expect("220 ")
	return c
}

// send writes s as it is.
func (c *rawSMTP) send(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("writing %.60q: %v", s, err)
	}
}

// reply reads one reply, multi-line or not, and returns its last line
// without CRLF; "" when the server closed the connection instead.
func (c *rawSMTP) reply() string {
	c.t.Helper()
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("no reply within %v (got %q)", rawTimeout, line)
			}
			return ""
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line
		}
	}
}

// expect reads a reply and fails unless it starts with prefix.
func (c *rawSMTP) expect(prefix string) string {
	c.t.Helper()
	got := c.reply()
	if !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("got reply %q, want %q…", got, prefix)
	}
	return got
}

// cmd sends line with CRLF and expects a reply starting with prefix.
func (c *rawSMTP) cmd(line, prefix string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.expect(prefix)
}

// login says EHLO and authenticates with AUTH PLAIN.
func (c *rawSMTP) login(user, password string) {
	c.t.Helper()
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH PLAIN "+b64("\x00"+user+"\x00"+password), "235 ")
}

// closed reports whether the server closes the connection without
// another reply.
func (c *rawSMTP) closed() bool {
	c.t.Helper()
	return c.reply() == ""
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// inboxWatch is a session through broker's IMAP idling in INBOX.
type inboxWatch struct {
	c      *imapclient.Client
	idle   *imapclient.IdleCommand
	exists chan uint32
	n      uint32 // messages in INBOX when the watch began
}

// watchInbox logs in through addr, selects INBOX and starts IDLE.
func watchInbox(t testing.TB, addr, user, password string) *inboxWatch {
	t.Helper()
	w := &inboxWatch{exists: make(chan uint32, 64)}
	c, err := imapclient.DialInsecure(addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					w.exists <- *data.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	w.c = c
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN through broker: %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	w.n = sel.NumMessages
	if w.idle, err = c.Idle(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	return w
}

// next waits until INBOX holds one message more than when the watch
// began, ends IDLE and returns that message as fetched.
func (w *inboxWatch) next(t testing.TB, logs func() string) []byte {
	t.Helper()
	want := w.n + 1
	timeout := time.After(smtpWait)
	for n := w.n; n < want; {
		select {
		case n = <-w.exists:
		case <-timeout:
			t.Fatalf("INBOX did not reach %d messages within %v\n%s", want, smtpWait, logs())
		}
	}
	if err := w.idle.Close(); err != nil {
		t.Fatalf("ending IDLE: %v", err)
	}
	if err := w.idle.Wait(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := w.c.Fetch(imap.SeqSetNum(want), &imap.FetchOptions{
		BodySection: []*imap.FetchItemBodySection{section},
	}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH %d BODY.PEEK[]: got %d messages, %v", want, len(msgs), err)
	}
	return msgs[0].FindBodySection(section)
}
