package harness

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

type postfixFixture struct {
	*fixture
	pf *Postfix
}

func startPostfixFixture(t *testing.T, opts PostfixOptions) *postfixFixture {
	t.Helper()
	f := startFixture(t)
	opts.Dovecot = f.dv
	start := time.Now()
	pf := StartPostfix(t, opts)
	t.Logf("StartPostfix took %v", time.Since(start))
	return &postfixFixture{fixture: f, pf: pf}
}

// logs returns both servers' logs for failure messages.
func (f *postfixFixture) logs() string {
	return f.pf.LogTail() + f.dv.LogTail()
}

// submit connects with STARTTLS.
func (f *postfixFixture) submit(t *testing.T) *smtp.Client {
	t.Helper()
	c, err := smtp.DialStartTLS(f.pf.SubmissionAddr, f.pf.TLSConfig())
	if err != nil {
		t.Fatalf("DialStartTLS %s: %v\n%s", f.pf.SubmissionAddr, err, f.logs())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// login connects with STARTTLS and authenticates as user with a user token.
func (f *postfixFixture) login(t *testing.T, user string) *smtp.Client {
	t.Helper()
	c := f.submit(t)
	if err := c.Auth(xoauth2.NewClient(user, f.signer.sign(t, userClaims(user)))); err != nil {
		t.Fatalf("AUTH XOAUTH2 as %s: %v\n%s", user, err, f.logs())
	}
	return c
}

// smtpCode returns the reply code of an SMTP error, 0 for nil, -1 for
// another error.
func smtpCode(err error) (int, smtp.EnhancedCode) {
	var e *smtp.SMTPError
	switch {
	case err == nil:
		return 0, smtp.EnhancedCode{}
	case errors.As(err, &e):
		return e.Code, e.EnhancedCode
	}
	return -1, smtp.EnhancedCode{}
}

// inboxWatcher is an IMAP session idling in a mailbox's INBOX.
type inboxWatcher struct {
	c      *imapclient.Client
	idle   *imapclient.IdleCommand
	exists chan uint32
}

func (f *postfixFixture) watchInbox(t *testing.T, mailbox string) *inboxWatcher {
	t.Helper()
	w := &inboxWatcher{exists: make(chan uint32, 16)}
	c, err := imapclient.DialTLS(f.dv.IMAPAddr, &imapclient.Options{
		TLSConfig: f.dv.TLSConfig(),
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					w.exists <- *data.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatalf("dial %s: %v", f.dv.IMAPAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	w.c = c
	if err := c.Authenticate(xoauth2.NewClient(mailbox, f.signer.sign(t, userClaims(mailbox)))); err != nil {
		t.Fatalf("IMAP AUTHENTICATE: %v\n%s", err, f.dv.LogTail())
	}
	if n := inboxMessages(t, c); n != 0 {
		t.Fatalf("got %d messages in INBOX, want 0", n)
	}
	if w.idle, err = c.Idle(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	return w
}

// wait returns the first message delivered, ending the IDLE.
func (w *inboxWatcher) wait(t *testing.T, f *postfixFixture) []byte {
	t.Helper()
	select {
	case n := <-w.exists:
		if n != 1 {
			t.Fatalf("got %d messages in INBOX, want 1", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no delivery within 10s\n%s", f.logs())
	}
	if err := w.idle.Close(); err != nil {
		t.Fatalf("ending IDLE: %v", err)
	}
	if err := w.idle.Wait(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := w.c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{
		BodySection: []*imap.FetchItemBodySection{section},
	}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH BODY.PEEK[]: got %d messages, %v", len(msgs), err)
	}
	return msgs[0].FindBodySection(section)
}

// testMessage exercises dot-stuffing, blank lines and a long line.
var testMessage = "From: Support <support@contoso.com>\r\n" +
	"To: Sales <sales@contoso.com>\r\n" +
	"Subject: through postfix\r\n" +
	"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
	"Message-ID: <harness-1@contoso.com>\r\n" +
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

func TestPostfixDeliversToDovecot(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{})
	w := f.watchInbox(t, "sales@contoso.com")

	c := f.submit(t)
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "XOAUTH2" {
		t.Fatalf("got AUTH %v %q after STARTTLS, want XOAUTH2 only\n%s", ok, mechs, f.logs())
	}
	if size, ok := c.MaxMessageSize(); !ok || size != defaultMessageSizeLimit {
		t.Fatalf("got SIZE %d %v, want %d", size, ok, defaultMessageSizeLimit)
	}
	if err := c.Auth(xoauth2.NewClient(testMailbox, f.signer.sign(t, userClaims(testMailbox)))); err != nil {
		t.Fatalf("AUTH XOAUTH2: %v\n%s", err, f.logs())
	}
	if err := c.SendMail(testMailbox, []string{"sales@contoso.com"}, strings.NewReader(testMessage)); err != nil {
		t.Fatalf("sending: %v\n%s", err, f.logs())
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}

	got := w.wait(t, f)
	if !bytes.HasSuffix(got, []byte(testMessage)) || len(got) == len(testMessage) {
		t.Fatalf("got message\n%s\nwant trace headers followed by exactly\n%s\n%s", got, testMessage, f.logs())
	}
	head := string(got[:len(got)-len(testMessage)])
	for _, want := range []string{"Return-Path: <" + testMailbox + ">\r\n", "by " + postfixHostname} {
		if !strings.Contains(head, want) {
			t.Fatalf("got trace headers\n%s\nwant them to contain %q", head, want)
		}
	}
}

func TestPostfixRequiresSTARTTLS(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{})
	dial := func(t *testing.T) *smtp.Client {
		t.Helper()
		c, err := smtp.Dial(f.pf.SubmissionAddr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Hello("client.test"); err != nil {
			t.Fatalf("EHLO: %v", err)
		}
		return c
	}
	// go-smtp ends a failed AUTH with "*", which Postfix takes for a
	// non-SMTP command and hangs up on: one connection per refusal.
	c := dial(t)
	if ok, mechs := c.Extension("AUTH"); ok {
		t.Fatalf("got AUTH %q before STARTTLS, want none", mechs)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatalf("got no STARTTLS, want it offered")
	}
	err := c.Auth(xoauth2.NewClient(testMailbox, f.signer.sign(t, userClaims(testMailbox))))
	if code, enh := smtpCode(err); code != 530 || enh != (smtp.EnhancedCode{5, 7, 0}) {
		t.Fatalf("got %v, want 530 5.7.0 before STARTTLS\n%s", err, f.logs())
	}
	err = dial(t).Mail(testMailbox, nil)
	if code, enh := smtpCode(err); code != 530 || enh != (smtp.EnhancedCode{5, 7, 0}) {
		t.Fatalf("got %v, want 530 5.7.0 before STARTTLS\n%s", err, f.logs())
	}
}

// Entra's tokens run to several KB; an XOAUTH2 response in base64 holding
// one does not fit Postfix's default 2048-byte command line.
func TestPostfixAcceptsLongToken(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{})
	token := f.signer.sign(t, with(userClaims(testMailbox), "padding", strings.Repeat("x", 4000)))
	c := f.submit(t)
	if err := c.Auth(xoauth2.NewClient(testMailbox, token)); err != nil {
		t.Fatalf("AUTH XOAUTH2 with a %d-byte token: %v\n%s", len(token), err, f.logs())
	}
}

func TestPostfixRefusesBadToken(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{})
	other := newSigner(t, testKID)
	cases := []struct {
		name, user, token string
	}{
		{"other key", testMailbox, other.sign(t, userClaims(testMailbox))},
		{"other user's token", testMailbox, f.signer.sign(t, userClaims("sales@contoso.com"))},
		{"not a JWT", testMailbox, "opaque-token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := f.submit(t)
			a := xoauth2.NewClient(tc.user, tc.token)
			err := c.Auth(a)
			if code, enh := smtpCode(err); code != 535 || enh != (smtp.EnhancedCode{5, 7, 8}) {
				t.Fatalf("got %v, want 535 5.7.8\n%s", err, f.logs())
			}
			// Dovecot's XOAUTH2 failure, relayed by Postfix as a 334
			// challenge that the client answers with an empty line.
			if ch := string(a.Challenge()); !strings.Contains(ch, `"status":"401"`) {
				t.Fatalf("got challenge %q, want Dovecot's JSON error", ch)
			}
		})
	}
}

func TestPostfixSenderLogins(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{})
	cases := []struct {
		name, from string
	}{
		{"other mailbox", "sales@contoso.com"},
		{"unknown address", "ceo@contoso.com"},
		{"other domain", "someone@example.org"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := f.login(t, testMailbox)
			// A sender restriction: Postfix evaluates it at RCPT TO.
			if err := c.Mail(tc.from, nil); err != nil {
				t.Fatalf("MAIL FROM:<%s>: got %v, want 250 (refused at RCPT)", tc.from, err)
			}
			err := c.Rcpt("sales@contoso.com", nil)
			if code, enh := smtpCode(err); code != 553 || enh != (smtp.EnhancedCode{5, 7, 1}) {
				t.Fatalf("got %v, want 553 5.7.1\n%s", err, f.logs())
			}
		})
	}
}

func TestPostfixSenderLoginsOption(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{SenderLogins: map[string][]string{
		"Support@Contoso.com": {"support@contoso.com", "Sales@contoso.com"},
	}})
	cases := []struct {
		name, login, from string
		want              int
	}{
		{"own address", testMailbox, testMailbox, 0},
		{"send as", testMailbox, "sales@contoso.com", 0},
		{"not granted", "sales@contoso.com", "sales@contoso.com", 553},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := f.login(t, tc.login)
			if err := c.Mail(tc.from, nil); err != nil {
				t.Fatalf("MAIL FROM: %v", err)
			}
			err := c.Rcpt("sales@contoso.com", nil)
			if code, _ := smtpCode(err); code != tc.want {
				t.Fatalf("got %v, want %d\n%s", err, tc.want, f.logs())
			}
		})
	}
}

// An app-only token logs in as whichever mailbox user= names, as in
// Dovecot; the send-as check then applies to that mailbox.
func TestPostfixAppToken(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{})
	for _, mailbox := range []string{testMailbox, "sales@contoso.com"} {
		c := f.submit(t)
		if err := c.Auth(xoauth2.NewClient(mailbox, f.signer.sign(t, appClaims()))); err != nil {
			t.Fatalf("AUTH XOAUTH2 as %s with an app token: %v\n%s", mailbox, err, f.logs())
		}
		if err := c.Mail(mailbox, nil); err != nil {
			t.Fatalf("MAIL FROM: %v", err)
		}
		if err := c.Rcpt(testMailbox, nil); err != nil {
			t.Fatalf("RCPT TO as %s: got %v, want 250\n%s", mailbox, err, f.logs())
		}
	}
}

func TestPostfixMessageSizeLimit(t *testing.T) {
	t.Parallel()
	const limit = 4096
	f := startPostfixFixture(t, PostfixOptions{MessageSizeLimit: limit})
	msg := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 2*limit/80)

	c := f.login(t, testMailbox)
	if size, ok := c.MaxMessageSize(); !ok || size != limit {
		t.Fatalf("got SIZE %d %v, want %d", size, ok, limit)
	}
	err := c.Mail(testMailbox, &smtp.MailOptions{Size: int64(len(msg))})
	if code, enh := smtpCode(err); code != 552 || enh != (smtp.EnhancedCode{5, 3, 4}) {
		t.Fatalf("MAIL FROM with SIZE=%d: got %v, want 552 5.3.4\n%s", len(msg), err, f.logs())
	}
	// Without SIZE=, Postfix reads the whole message, then refuses it.
	err = f.login(t, testMailbox).SendMail(testMailbox, []string{"sales@contoso.com"}, strings.NewReader(msg))
	if code, enh := smtpCode(err); code != 552 || enh != (smtp.EnhancedCode{5, 3, 4}) {
		t.Fatalf("DATA of %d bytes: got %v, want 552 5.3.4\n%s", len(msg), err, f.logs())
	}
}

func TestPostfixRefusesRecipients(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{})
	cases := []struct {
		name, rcpt string
		code       int
		enh        smtp.EnhancedCode
	}{
		{"unknown mailbox", "nobody@contoso.com", 550, smtp.EnhancedCode{5, 1, 1}},
		{"other domain", "someone@example.org", 554, smtp.EnhancedCode{5, 7, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := f.login(t, testMailbox)
			if err := c.Mail(testMailbox, nil); err != nil {
				t.Fatalf("MAIL FROM: %v", err)
			}
			err := c.Rcpt(tc.rcpt, nil)
			if code, enh := smtpCode(err); code != tc.code || enh != tc.enh {
				t.Fatalf("got %v, want %d %v\n%s", err, tc.code, tc.enh, f.logs())
			}
		})
	}
	// Not Exchange's 530 5.7.57 at MAIL FROM, but refused all the same.
	unauth := []struct {
		name, from string
		code       int
	}{
		{"unauthenticated", "someone@example.org", 554},
		{"unauthenticated as a mailbox", testMailbox, 553},
	}
	for _, tc := range unauth {
		t.Run(tc.name, func(t *testing.T) {
			c := f.submit(t)
			if err := c.Mail(tc.from, nil); err != nil {
				t.Fatalf("MAIL FROM: %v", err)
			}
			err := c.Rcpt("sales@contoso.com", nil)
			if code, enh := smtpCode(err); code != tc.code || enh != (smtp.EnhancedCode{5, 7, 1}) {
				t.Fatalf("got %v, want %d 5.7.1\n%s", err, tc.code, f.logs())
			}
		})
	}
}

func TestPostfixStop(t *testing.T) {
	t.Parallel()
	f := startPostfixFixture(t, PostfixOptions{})
	c := f.login(t, testMailbox)
	pgid := f.pf.pgid
	if n := liveProcesses(t, pgid); n < 2 {
		t.Fatalf("got %d processes in group %d while running, want the master and its children", n, pgid)
	}
	start := time.Now()
	f.pf.Stop()
	t.Logf("Stop took %v", time.Since(start))
	if err := c.Noop(); err == nil {
		t.Fatalf("NOOP after Stop succeeded, want the session gone")
	}
	if n := liveProcesses(t, pgid); n != 0 {
		t.Fatalf("got %d live processes in group %d after Stop, want 0", n, pgid)
	}
	f.pf.Stop()
}

func BenchmarkStartPostfix(b *testing.B) {
	s := newSigner(b, testKID)
	dv := StartDovecot(b, DovecotOptions{
		KeyID:        testKID,
		PublicKeyPEM: s.publicKeyPEM(b),
		Issuers:      []string{testIssuer},
		Audience:     testAudience,
		Mailboxes:    []string{testMailbox},
	})
	for b.Loop() {
		StartPostfix(b, PostfixOptions{Dovecot: dv}).Stop()
	}
}
