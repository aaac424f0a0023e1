package main

// broker doctor's IMAP check: the account's token logs in to the mailbox
// with XOAUTH2 as the proxy would, and INBOX opens read-only.

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// imapOutcome is what the IMAP login found.
type imapOutcome struct {
	addr string
	// err is a failure before Exchange answered: connection, TLS, timeout.
	err error
	// status and text are Exchange's refusal: "NO", "AUTHENTICATE failed.".
	// step is the command refused: AUTHENTICATE or EXAMINE.
	status, text, step string
	// challenge is the error challenge sent before the refusal, decoded.
	challenge string
	exists    int // messages in INBOX, after a login
}

func (o *imapOutcome) ok() bool { return o.err == nil && o.status == "" }

// authRefused reports whether Exchange refused the token itself.
func (o *imapOutcome) authRefused() bool {
	return o.step == "AUTHENTICATE" && strings.Contains(strings.ToLower(o.text), "authenticate failed")
}

const maxIMAPLine = 64 << 10

func probeIMAP(ctx context.Context, ic *config.IMAP, mailbox, token string) *imapOutcome {
	o := &imapOutcome{addr: ic.Upstream}
	ctx, conn, _, done, err := dialProbe(ctx, &ic.Listener, false)
	if err != nil {
		o.err = err
		return o
	}
	defer done()
	c := &imapConn{r: bufio.NewReaderSize(conn, 4096), w: conn}
	greeting, err := c.line()
	if err != nil {
		o.err = timedOut(ctx, err)
		return o
	}
	if !strings.HasPrefix(greeting, "* OK") {
		o.step, o.status, o.text = "greeting", "BYE", strings.TrimPrefix(greeting, "* ")
		return o
	}
	ir := base64.StdEncoding.EncodeToString(xoauth2.Response(mailbox, token))
	status, text, err := c.command("d1", "AUTHENTICATE XOAUTH2 "+ir, func(challenge string) {
		if b, err := base64.StdEncoding.DecodeString(challenge); err == nil {
			o.challenge = string(b)
		}
	})
	if err != nil {
		o.err = timedOut(ctx, err)
		return o
	}
	if status != "OK" {
		o.step, o.status, o.text = "AUTHENTICATE", status, text
		return o
	}
	var exists int
	c.untagged = func(line string) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "*" && strings.EqualFold(f[2], "EXISTS") {
			exists, _ = strconv.Atoi(f[1])
		}
	}
	status, text, err = c.command("d2", "EXAMINE INBOX", nil)
	if err != nil {
		o.err = timedOut(ctx, err)
		return o
	}
	if status != "OK" {
		o.step, o.status, o.text = "EXAMINE INBOX", status, text
		return o
	}
	o.exists = exists
	c.command("d3", "LOGOUT", nil)
	return o
}

// imapConn speaks just enough IMAP for a login and EXAMINE.
type imapConn struct {
	r        *bufio.Reader
	w        io.Writer
	untagged func(line string)
}

// line reads one response line, skipping the bytes of literals it
// announces, without its CRLF.
func (c *imapConn) line() (string, error) {
	var b strings.Builder
	for {
		part, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || b.Len()+len(part) > maxIMAPLine {
			return "", errors.New("response line too long")
		}
		if err != nil {
			return "", err
		}
		s := strings.TrimRight(string(part), "\r\n")
		b.WriteString(s)
		n, ok := literalSize(s)
		if !ok {
			return b.String(), nil
		}
		if n > maxIMAPLine {
			return "", errors.New("literal too long")
		}
		if _, err := io.CopyN(io.Discard, c.r, n); err != nil {
			return "", err
		}
	}
}

// literalSize reads a trailing {n} or {n+}.
func literalSize(s string) (int64, bool) {
	if !strings.HasSuffix(s, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(s, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(s[i+1:len(s)-1], "+"), 10, 32)
	return n, err == nil && n >= 0
}

// command sends tag cmd and reads until the tagged response. A
// continuation request is answered with an empty line: for XOAUTH2 it
// is the error challenge.
func (c *imapConn) command(tag, cmd string, challenge func(string)) (status, text string, err error) {
	if _, err := io.WriteString(c.w, tag+" "+cmd+"\r\n"); err != nil {
		return "", "", err
	}
	for {
		line, err := c.line()
		if err != nil {
			return "", "", err
		}
		switch {
		case strings.HasPrefix(line, "+"):
			if challenge != nil {
				challenge(strings.TrimSpace(strings.TrimPrefix(line, "+")))
			}
			if _, err := io.WriteString(c.w, "\r\n"); err != nil {
				return "", "", err
			}
		case strings.HasPrefix(line, tag+" "):
			rest := strings.TrimPrefix(line, tag+" ")
			status, text, _ = strings.Cut(rest, " ")
			return strings.ToUpper(status), text, nil
		case strings.HasPrefix(line, "* BYE"):
			return "BYE", strings.TrimSpace(strings.TrimPrefix(line, "* BYE")), nil
		default:
			if c.untagged != nil {
				c.untagged(line)
			}
		}
	}
}

// result turns the outcome into check 7's line. sm, the SMTP login of the
// same token (nil when not tried), narrows down a refusal: what lets SMTP
// in is not what keeps IMAP out.
func (o *imapOutcome) result(acct *config.Account, sm *smtpOutcome) doctorResult {
	mailbox := acct.Mailbox
	switch {
	case o.err != nil:
		return connectionFailure(checkIMAP, o.addr, o.err)
	case o.ok():
		return pass(checkIMAP, fmt.Sprintf("%s: XOAUTH2 login as %s, INBOX has %s", o.addr, mailbox, plural(o.exists, "message")))
	}
	detail := fmt.Sprintf("%s answered %s: %s %s", o.addr, o.step, o.status, o.text)
	detail = withChallenge(detail, o.challenge)
	if o.authRefused() && sm != nil {
		switch {
		case sm.ok():
			return fail(checkIMAP, detail, fmt.Sprintf("IMAP is disabled for %s (SMTP AUTH takes the same token, so the mailbox and its permissions are fine): enable it with Set-CASMailbox -Identity %s -ImapEnabled $true (Microsoft 365 admin center > Users > Active users > %s > Mail > Manage email apps > IMAP).", mailbox, mailbox, mailbox))
		case sm.authRefused():
			return fail(checkIMAP, detail, noMailboxAccessFix(acct))
		}
	}
	if advice, temporary, ok := imapRefusalAdvice(o.text); ok {
		return adviceResult(checkIMAP, detail, acct, advice, temporary)
	}
	return fail(checkIMAP, detail, "Check the mailbox "+mailbox+" in the Microsoft 365 admin center (licence, IMAP enabled) against Exchange's answer.")
}

// noMailboxAccessFix is the fix when both IMAP and SMTP refuse a token
// that has the right permissions: the token's identity may not open the
// mailbox.
func noMailboxAccessFix(acct *config.Account) string {
	m := acct.Mailbox
	if acct.Delegated() {
		return fmt.Sprintf("%s may not open %s (IMAP and SMTP both refuse a token with the right scopes): check that %s exists and has an Exchange Online licence, and grant %s access with Add-MailboxPermission -Identity %s -User %s -AccessRights FullAccess.",
			acct.LoginUser, m, m, acct.LoginUser, m, acct.LoginUser)
	}
	return fmt.Sprintf("The app's service principal may not open %s (IMAP and SMTP both refuse a token with the right roles): register it with New-ServicePrincipal -AppId %s -ObjectId <enterprise-app-object-id>, grant Add-MailboxPermission -Identity %s -User <enterprise-app-object-id> -AccessRights FullAccess, and check that %s has an Exchange Online licence.",
		m, acct.App.ClientID, m, m)
}

// fillAdvice puts the account's names into proxy's advice.
func fillAdvice(advice string, acct *config.Account) string {
	identity := "<enterprise-app-object-id>"
	if acct.Delegated() {
		identity = acct.LoginUser
	}
	return strings.NewReplacer(
		"<mailbox>", acct.Mailbox,
		"<service principal>", identity,
		"<identity>", identity,
	).Replace(advice)
}
