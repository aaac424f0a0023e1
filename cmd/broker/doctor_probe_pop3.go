package main

// broker doctor's POP3 check: the account's token logs in to the mailbox
// with AUTH XOAUTH2 as the proxy would, then STAT and QUIT (which, with
// nothing deleted, changes nothing).

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// pop3Outcome is what the POP3 login found.
type pop3Outcome struct {
	addr string
	// err is a failure before Exchange answered: connection, TLS, timeout.
	err error
	// text is Exchange's -ERR text, step the command refused: greeting,
	// AUTH or STAT.
	text, step string
	// challenge is the error challenge sent before the refusal, decoded.
	challenge string
	stat      string // STAT's answer after +OK: "3 4521"
}

func (o *pop3Outcome) ok() bool { return o.err == nil && o.step == "" }

// authRefused reports whether Exchange refused the token itself
// ("Authentication failure: unknown user name or bad password.").
func (o *pop3Outcome) authRefused() bool {
	t := strings.ToLower(o.text)
	return o.step == "AUTH" && (strings.Contains(t, "authentication fail") || strings.Contains(t, "logon failure") || strings.Contains(t, "[auth]"))
}

const maxPOP3Line = 4 << 10

func probePOP3(ctx context.Context, pc *config.POP3, mailbox, token string) *pop3Outcome {
	o := &pop3Outcome{addr: pc.Upstream}
	ctx, conn, _, done, err := dialProbe(ctx, &pc.Listener, false)
	if err != nil {
		o.err = err
		return o
	}
	defer done()
	c := &pop3Conn{r: bufio.NewReaderSize(conn, 4096), w: conn}
	fail := func(err error) *pop3Outcome {
		o.err = timedOut(ctx, err)
		return o
	}
	greeting, err := c.line()
	if err != nil {
		return fail(err)
	}
	if !strings.HasPrefix(greeting, "+OK") {
		o.step, o.text = "greeting", strings.TrimSpace(strings.TrimPrefix(greeting, "-ERR"))
		return o
	}
	// Two steps, as the proxy logs in: AUTH XOAUTH2, then the response
	// after "+".
	r, err := c.command("AUTH XOAUTH2")
	if err != nil {
		return fail(err)
	}
	if strings.HasPrefix(r, "+") && !strings.HasPrefix(r, "+OK") {
		r, err = c.command(base64.StdEncoding.EncodeToString(xoauth2.Response(mailbox, token)))
		if err != nil {
			return fail(err)
		}
		if strings.HasPrefix(r, "+") && !strings.HasPrefix(r, "+OK") {
			// The error challenge: answered with an empty line, then
			// the -ERR.
			if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(r, "+"))); err == nil {
				o.challenge = string(b)
			}
			if r, err = c.command(""); err != nil {
				return fail(err)
			}
		}
	}
	if !strings.HasPrefix(r, "+OK") {
		o.step, o.text = "AUTH", strings.TrimSpace(strings.TrimPrefix(r, "-ERR"))
		return o
	}
	r, err = c.command("STAT")
	if err != nil {
		return fail(err)
	}
	if !strings.HasPrefix(r, "+OK") {
		o.step, o.text = "STAT", strings.TrimSpace(strings.TrimPrefix(r, "-ERR"))
		return o
	}
	o.stat = strings.TrimSpace(strings.TrimPrefix(r, "+OK"))
	c.command("QUIT")
	return o
}

// pop3Conn speaks just enough POP3 for a login and STAT.
type pop3Conn struct {
	r *bufio.Reader
	w io.Writer
}

func (c *pop3Conn) line() (string, error) {
	l, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(l) > maxPOP3Line {
		return "", errors.New("response line too long")
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(l), "\r\n"), nil
}

// command sends line and reads the one-line answer.
func (c *pop3Conn) command(line string) (string, error) {
	if _, err := io.WriteString(c.w, line+"\r\n"); err != nil {
		return "", err
	}
	return c.line()
}

// messages reads STAT's "count size".
func (o *pop3Outcome) messages() string {
	var n, size int
	if _, err := fmt.Sscanf(o.stat, "%d %d", &n, &size); err != nil {
		return "STAT " + oneLineText(o.stat)
	}
	return plural(n, "message") + fmt.Sprintf(" (%d bytes)", size)
}

// result turns the outcome into the POP3 check's line. im and sm, the
// IMAP and SMTP logins of the same token (nil when not tried), narrow down
// a refusal: what lets them in is not what keeps POP3 out.
func (o *pop3Outcome) result(acct *config.Account, im *imapOutcome, sm *smtpOutcome) doctorResult {
	mailbox := acct.Mailbox
	switch {
	case o.err != nil:
		return connectionFailure(checkPOP3, o.addr, o.err)
	case o.ok():
		return pass(checkPOP3, fmt.Sprintf("%s: XOAUTH2 login as %s, %s", o.addr, mailbox, o.messages()))
	}
	detail := fmt.Sprintf("%s answered %s: -ERR %s", o.addr, o.step, o.text)
	detail = withChallenge(detail, o.challenge)
	if o.authRefused() {
		other := ""
		switch {
		case im != nil && im.ok():
			other = "IMAP"
		case sm != nil && sm.ok():
			other = "SMTP AUTH"
		}
		if other != "" {
			return fail(checkPOP3, detail, fmt.Sprintf("POP is disabled for %s (%s takes the same token, so the mailbox is fine): enable it with Set-CASMailbox -Identity %s -PopEnabled $true (Microsoft 365 admin center > Users > Active users > %s > Mail > Manage email apps > POP).", mailbox, other, mailbox, mailbox))
		}
		if (im != nil && im.authRefused()) || (sm != nil && sm.authRefused()) {
			return fail(checkPOP3, detail, noMailboxAccessFix(acct))
		}
	}
	if advice, temporary, ok := pop3RefusalAdvice(o.text); ok {
		return adviceResult(checkPOP3, detail, acct, advice, temporary)
	}
	return fail(checkPOP3, detail, "Check the mailbox "+mailbox+" in the Microsoft 365 admin center (licence, POP enabled) against Exchange's answer.")
}
