package main

// broker doctor's SMTP check: EHLO, STARTTLS (or implicit TLS on 465),
// AUTH XOAUTH2 with the account's token, then MAIL FROM the mailbox and
// RSET to see send-as accepted. No message is sent.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// smtpOutcome is what the SMTP login found.
type smtpOutcome struct {
	addr string
	err  error // before Exchange answered AUTH: connection, TLS, timeout
	// auth is Exchange's refusal of AUTH; mail its refusal of MAIL FROM.
	auth, mail *smtp.SMTPError
	challenge  string
}

func (o *smtpOutcome) ok() bool { return o.err == nil && o.auth == nil }

// authRefused reports whether Exchange refused the token itself (5.7.3),
// not SMTP AUTH as such (5.7.139).
func (o *smtpOutcome) authRefused() bool {
	return o.auth != nil && o.auth.EnhancedCode == smtp.EnhancedCode{5, 7, 3}
}

func probeSMTP(ctx context.Context, sc *config.SMTP, mailbox, token string) *smtpOutcome {
	o := &smtpOutcome{addr: sc.Upstream}
	// Plain: the client below starts TLS, with STARTTLS or implicitly.
	ctx, conn, conf, done, err := dialProbe(ctx, &sc.Listener, true)
	if err != nil {
		o.err = err
		return o
	}
	defer done()
	var c *smtp.Client
	if sc.UpstreamImplicitTLS {
		c = smtp.NewClient(tls.Client(conn, conf))
	} else if c, err = smtp.NewClientStartTLS(conn, conf); err != nil {
		o.err = timedOut(ctx, err)
		return o
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.CommandTimeout = time.Until(dl)
	}
	if err := c.Hello(hostname()); err != nil {
		o.err = timedOut(ctx, err)
		return o
	}
	auth := xoauth2.NewClient(mailbox, token)
	if err := c.Auth(auth); err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			o.err = timedOut(ctx, err)
			return o
		}
		o.auth, o.challenge = se, string(auth.Challenge())
		c.Quit()
		return o
	}
	if err := c.Mail(mailbox, nil); err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			o.err = timedOut(ctx, err)
			return o
		}
		o.mail = se
	}
	c.Reset()
	c.Quit()
	return o
}

func timedOut(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("no answer within %v", doctorStepTimeout)
	}
	return err
}

func smtpReplyText(e *smtp.SMTPError) string {
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], oneLineText(e.Message))
}

// result turns the outcome into check 8's line. im, the IMAP login of the
// same token (nil when not tried), narrows down a refusal.
func (o *smtpOutcome) result(acct *config.Account, im *imapOutcome) doctorResult {
	mailbox := acct.Mailbox
	switch {
	case o.err != nil:
		return connectionFailure(checkSMTP, o.addr, o.err)
	case o.auth != nil:
		detail := fmt.Sprintf("%s answered AUTH: %s", o.addr, smtpReplyText(o.auth))
		detail = withChallenge(detail, o.challenge)
		if o.authRefused() && im != nil && im.authRefused() {
			return fail(checkSMTP, detail, noMailboxAccessFix(acct))
		}
		if advice, temporary, ok := smtpRefusalAdvice(o.auth); ok {
			return adviceResult(checkSMTP, detail, acct, advice, temporary)
		}
		return fail(checkSMTP, detail, "Check that SMTP AUTH is enabled for "+mailbox+" (Set-CASMailbox -Identity "+mailbox+" -SmtpClientAuthenticationDisabled $false) against Exchange's answer.")
	case o.mail != nil:
		detail := fmt.Sprintf("%s: AUTH XOAUTH2 accepted, but MAIL FROM:<%s> answered %s", o.addr, mailbox, smtpReplyText(o.mail))
		who := "<enterprise-app-object-id>"
		if acct.Delegated() {
			who = acct.LoginUser
		}
		return fail(checkSMTP, detail, fmt.Sprintf("Let the token's identity send as %s: Add-RecipientPermission -Identity %s -Trustee %s -AccessRights SendAs.", mailbox, mailbox, who))
	}
	return pass(checkSMTP, fmt.Sprintf("%s: AUTH XOAUTH2 as %s accepted, MAIL FROM:<%s> accepted (no message sent)", o.addr, mailbox, mailbox))
}
