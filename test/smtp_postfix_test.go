package test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/mailbroker/broker/proxy/xoauth2"
	"github.com/mailbroker/broker/test/harness"
	"github.com/mailbroker/broker/test/m365sim"
)

// postfixEnv is a broker daemon whose SMTP upstream is a real Postfix
// (STARTTLS, XOAUTH2 checked by Dovecot) delivering to a real Dovecot, which
// is also broker's IMAP upstream. Tokens come from the simulated Entra.
type postfixEnv struct {
	Entra    *m365sim.Entra
	Dovecot  *harness.Dovecot
	Postfix  *harness.Postfix
	Daemon   *daemon
	Password string
	Secret   string
}

func newPostfixEnv(t *testing.T) *postfixEnv {
	t.Helper()
	return newPostfixEnvConfig(t, "")
}

// newPostfixEnvConfig is newPostfixEnv with top-level keys put in front of
// broker's configuration, e.g. log_level.
func newPostfixEnvConfig(t *testing.T, top string) *postfixEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &postfixEnv{Entra: entra, Secret: "postfix-env-secret"}
	tid := entra.AddTenant(tenant)
	entra.AddApp(m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: env.Secret,
		Roles: smtpRoles, Mailboxes: []string{mailbox},
	})
	env.Dovecot = harness.StartDovecot(t, harness.DovecotOptions{
		KeyID:        entra.KeyID(),
		PublicKeyPEM: entra.PublicKeyPEM(),
		Issuers:      []string{entra.Issuer(tid)},
		Audience:     "https://outlook.office.com",
		Mailboxes:    []string{mailbox, "sales@contoso.com"},
	})
	env.Postfix = harness.StartPostfix(t, harness.PostfixOptions{Dovecot: env.Dovecot})
	dir := t.TempDir()
	secret := writeFile(t, dir, "client.secret", []byte(env.Secret))
	cfg := top + smtpBrokerConfig(dir+"/state", env.Dovecot.IMAPAddr, env.Dovecot.CAFile,
		env.Postfix.SubmissionAddr, env.Postfix.CAFile, entra.URL(), secret, "")
	env.Daemon = startDaemon(t, dir, cfg)
	_, env.Password = env.Daemon.addAppPassword(mailbox)
	return env
}

// logs returns broker's, Postfix's and Dovecot's logs for failure messages.
func (env *postfixEnv) logs() string {
	return "--- broker ---\n" + env.Daemon.Log() + env.Postfix.LogTail() + env.Dovecot.LogTail()
}

// waitPostfixLog polls Postfix's log, which has no notification, until a
// line contains substr.
func (env *postfixEnv) waitPostfixLog(t *testing.T, substr string) {
	t.Helper()
	deadline := time.Now().Add(smtpWait)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(env.Postfix.LogTail(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("Postfix did not log %q within %v\n%s", substr, smtpWait, env.logs())
		}
		<-tick.C
	}
}

// directPostfix logs in to Postfix itself with a token of the app, as
// broker does, to learn Postfix's own replies.
func (env *postfixEnv) directPostfix(t *testing.T) *smtp.Client {
	t.Helper()
	cc := clientcredentials.Config{
		ClientID: clientID, ClientSecret: env.Secret,
		TokenURL:  env.Entra.URL() + "/" + tenant + "/oauth2/v2.0/token",
		Scopes:    []string{"https://outlook.office365.com/.default"},
		AuthStyle: oauth2.AuthStyleInParams,
	}
	tok, err := cc.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.DialStartTLS(env.Postfix.SubmissionAddr, env.Postfix.TLSConfig())
	if err != nil {
		t.Fatalf("dial Postfix: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Auth(xoauth2.NewClient(mailbox, tok.AccessToken)); err != nil {
		t.Fatalf("AUTH XOAUTH2 at Postfix: %v\n%s", err, env.logs())
	}
	return c
}

// traceHeaderRE matches the header lines Postfix and Dovecot put in front
// of a delivered message, and their continuation lines.
var traceHeaderRE = regexp.MustCompile(`^((Return-Path|Delivered-To|Received|X-Original-To): |[ \t])`)

// checkDelivered fails unless got is sent with only trace headers before.
func checkDelivered(t *testing.T, got []byte, sent string) {
	t.Helper()
	if !strings.HasSuffix(string(got), sent) {
		t.Fatalf("fetched through broker:\n%q\nwant it to end with exactly what was sent:\n%q", got, sent)
	}
	head := strings.TrimSuffix(string(got), sent)
	if head == "" || !strings.HasSuffix(head, "\r\n") {
		t.Fatalf("fetched message has trace headers %q, want some, each ending in CRLF", head)
	}
	for _, line := range strings.Split(strings.TrimSuffix(head, "\r\n"), "\r\n") {
		if !traceHeaderRE.MatchString(line) {
			t.Fatalf("fetched message has %q in front of what was sent; want only trace headers\n%s", line, head)
		}
	}
	for _, want := range []string{"Return-Path: <" + mailbox + ">\r\n", "Received: "} {
		if !strings.Contains(head, want) {
			t.Fatalf("trace headers\n%s\nlack %q", head, want)
		}
	}
}

// TestSMTPPostfix runs broker against a real submission server: a message
// goes through broker's SMTP to Postfix, which delivers it to Dovecot, and
// comes back through broker's IMAP byte for byte. Postfix's refusals of
// one recipient and of a sender reach the client as Postfix gave them.
// Last, Postfix is stopped in the middle of a message's DATA: the client
// gets 451 4.4.2, never 250.
func TestSMTPPostfix(t *testing.T) {
	env := newPostfixEnv(t)

	// What Postfix itself answers.
	direct := env.directPostfix(t)
	if err := direct.Mail(mailbox, nil); err != nil {
		t.Fatalf("MAIL FROM at Postfix: %v", err)
	}
	unknownRcpt := direct.Rcpt("nobody@contoso.com", nil)
	if code, enh, _ := smtpReply(unknownRcpt); code != 550 || enh != (smtp.EnhancedCode{5, 1, 1}) {
		t.Fatalf("Postfix answered RCPT TO an unknown mailbox with %v, want 550 5.1.1", unknownRcpt)
	}
	if err := direct.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := direct.Mail("sales@contoso.com", nil); err != nil {
		t.Fatalf("MAIL FROM another sender at Postfix: %v", err)
	}
	sendAsDenied := direct.Rcpt(mailbox, nil)
	if code, enh, _ := smtpReply(sendAsDenied); code != 553 || enh != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("Postfix answered RCPT TO after a foreign MAIL FROM with %v, want 553 5.7.1", sendAsDenied)
	}
	direct.Quit()

	t.Run("round trip", func(t *testing.T) {
		w := watchInbox(t, env.Daemon.IMAPAddr, mailbox, env.Password)
		// No line longer than 998 octets: Postfix's LMTP client would fold
		// it (smtp_line_length_limit).
		msg := smtpMessage("through broker and Postfix", "postfix-1@contoso.com")
		c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
		if err := c.Mail(mailbox, nil); err != nil {
			t.Fatalf("MAIL FROM: %v\n%s", err, env.logs())
		}
		code, enh, text := smtpReply(unknownRcpt)
		checkReply(t, "RCPT TO an unknown mailbox", c.Rcpt("nobody@contoso.com", nil),
			smtp.SMTPError{Code: code, EnhancedCode: enh, Message: text})
		if err := c.Rcpt(mailbox, nil); err != nil {
			t.Fatalf("RCPT TO:<%s>: %v\n%s", mailbox, err, env.logs())
		}
		wc, err := c.Data()
		if err != nil {
			t.Fatalf("DATA: %v", err)
		}
		if _, err := wc.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		resp, err := wc.CloseWithResponse()
		if err != nil {
			t.Fatalf("end of DATA: %v\n%s", err, env.logs())
		}
		// Postfix's own 250 names its queue ID.
		if !regexp.MustCompile(`^2\.0\.0 Ok: queued as [0-9A-Za-z]+$`).MatchString(resp.StatusText) {
			t.Fatalf("end of DATA: got %q, want Postfix's 250 with its queue ID", resp.StatusText)
		}
		if err := c.Quit(); err != nil {
			t.Fatalf("QUIT: %v", err)
		}
		checkDelivered(t, w.next(t, env.logs), msg)
	})

	t.Run("sender refused", func(t *testing.T) {
		c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
		if err := c.Mail("sales@contoso.com", nil); err != nil {
			t.Fatalf("MAIL FROM: %v", err)
		}
		code, enh, text := smtpReply(sendAsDenied)
		checkReply(t, "RCPT TO after a foreign MAIL FROM", c.Rcpt(mailbox, nil),
			smtp.SMTPError{Code: code, EnhancedCode: enh, Message: text})
	})

	t.Run("overlong line", func(t *testing.T) {
		// Postfix takes lines of any length; broker refuses one longer than
		// 65536 octets as it reads it, without the final dot upstream.
		c := dialRawSMTP(t, env.Daemon.SMTPAddr)
		c.login(mailbox, env.Password)
		c.cmd("MAIL FROM:<"+mailbox+">", "250 ")
		c.cmd("RCPT TO:<"+mailbox+">", "250 ")
		c.cmd("DATA", "354 ")
		c.cmd("Subject: html\r\n\r\n"+strings.Repeat("<td>x</td>", 7000)+"\r\n.", "554 5.6.0 ")
		// The rest of that line cannot be told from commands any more.
		c.expect("500 5.4.0 ")
		if !c.closed() {
			t.Fatalf("connection still open after 500 5.4.0")
		}
	})

	t.Run("stopped during DATA", func(t *testing.T) {
		const messageID = "stopped-mid-data@contoso.com"
		relayed := strings.Count(env.Daemon.Log(), `msg="message relayed"`)
		chunk := strings.Repeat(strings.Repeat("y", 78)+"\r\n", (256<<10)/80)
		c := dialRawSMTP(t, env.Daemon.SMTPAddr)
		c.login(mailbox, env.Password)
		c.cmd("MAIL FROM:<"+mailbox+">", "250 ")
		c.cmd("RCPT TO:<"+mailbox+">", "250 ")
		c.cmd("DATA", "354 ")
		c.send("From: <" + mailbox + ">\r\nSubject: cut off\r\nMessage-ID: <" + messageID + ">\r\n\r\n" + chunk)
		// Postfix's cleanup logs the Message-ID as the header passes:
		// Postfix is now in the middle of this message.
		env.waitPostfixLog(t, "message-id=<"+messageID+">")
		env.Postfix.Stop()
		c.send(chunk + ".\r\n")
		reply := c.reply()
		if !strings.HasPrefix(reply, "451 4.4.2 ") {
			t.Fatalf("end of DATA after Postfix stopped: got %q, want 451 4.4.2\n%s", reply, env.logs())
		}
		env.Daemon.waitLog(`msg="message not relayed`)
		if n := strings.Count(env.Daemon.Log(), `msg="message relayed"`); n != relayed {
			t.Fatalf("daemon logged %d relayed messages, want %d as before", n, relayed)
		}
	})
}

// TestSMTPPostfixReuse: senders that connect once per message, as
// scanners do, share one upstream login at Postfix: each session after the
// first reuses the connection the one before left, after NOOP. One that
// left a transaction open (MAIL, RCPT, QUIT) is reset with RSET and EHLO
// first, which must leave Postfix's AUTH in force. Postfix takes every
// message (its 250 reaches the client, its cleanup logs the message).
func TestSMTPPostfixReuse(t *testing.T) {
	env := newPostfixEnvConfig(t, `log_level = "debug"`+"\n")
	sendOne := func(i int) {
		id := fmt.Sprintf("reuse-%d@contoso.com", i)
		c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
		if err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader(smtpMessage(fmt.Sprint("reused ", i), id))); err != nil {
			t.Fatalf("message %d: %v\n%s", i, err, env.logs())
		}
		if err := c.Quit(); err != nil {
			t.Fatalf("QUIT: %v", err)
		}
		env.waitPostfixLog(t, "message-id=<"+id+">")
	}
	sendOne(1)
	env.Daemon.waitLogCount(`msg="upstream session kept for reuse"`, 1)

	c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
	if err := c.Mail(mailbox, nil); err != nil {
		t.Fatalf("MAIL FROM: %v\n%s", err, env.logs())
	}
	if err := c.Rcpt(mailbox, nil); err != nil {
		t.Fatalf("RCPT TO: %v\n%s", err, env.logs())
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	env.Daemon.waitLogCount(`msg="upstream session reset and kept for reuse"`, 1)

	sendOne(2)
	env.Daemon.waitLogCount(`msg="upstream session kept for reuse"`, 2)
	if n := env.Daemon.countLog(`msg="upstream session reused"`); n != 2 {
		t.Fatalf("broker reused the upstream session %d times, want 2\n%s", n, env.logs())
	}
}
