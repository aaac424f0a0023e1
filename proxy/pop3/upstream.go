package pop3

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/mailbroker/broker/proxy"
)

const (
	// maxUpstreamLine bounds one upstream line during login.
	maxUpstreamLine = 16 << 10
	// maxCapaLines bounds upstream's CAPA listing.
	maxCapaLines = 100
	// upstreamReadBuffer is the upstream reader's size during login; the
	// reader is dropped once the session is spliced.
	upstreamReadBuffer = 4 << 10
	// maxErrorChallenges bounds the "+ " lines answered after the SASL
	// response (one error challenge is the rule).
	maxErrorChallenges = 2
)

// Client-visible reasons of upstream failures. The detail goes to the log.
const (
	reasonUnavailable = "Upstream server unavailable, try again later"
	reasonRefused     = "Mailbox login refused by the mail server, contact your administrator"
	reasonNotPOP3     = "This account cannot be used with POP3, contact your administrator"
)

// errNoSASL: the Authenticator's upstream for the account is not a SASL
// login (a Microsoft Graph account, for SMTP only).
var errNoSASL = errors.New("the account's upstream has no SASL login: it cannot serve POP3")

// rejection is upstream's -ERR to a login step.
type rejection struct {
	Step      string // the command refused
	Text      string // upstream's reply after -ERR
	Challenge []byte // the decoded SASL error challenge, if one was sent
}

func (e *rejection) Error() string {
	msg := "upstream -ERR to " + e.Step + ": " + e.Text
	if len(e.Challenge) > 0 {
		msg += " (challenge " + proxy.ReplyText(string(e.Challenge), "") + ")"
	}
	return msg
}

// upstreamConn is an upstream connection during login.
type upstreamConn struct {
	conn net.Conn
	br   *bufio.Reader
}

// greet reads a new connection's greeting and asks for CAPA (RFC 2449),
// whose answer s keeps for the next clients: all that comes before the
// login, done ahead of it on a warm connection.
func (s *Server) greet(g *proxy.Greeted) error {
	u := &upstreamConn{conn: g.Conn, br: g.Reader}
	if err := u.greeting(); err != nil {
		return err
	}
	caps, err := u.capa()
	if err != nil {
		return err
	}
	if caps != nil {
		s.learnCaps(caps)
	}
	g.Caps = caps
	return nil
}

// greeting reads upstream's greeting, which must be +OK.
func (u *upstreamConn) greeting() error {
	line, err := u.readLine()
	if err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	if !isOK(line) {
		return fmt.Errorf("unexpected greeting %q", proxy.ReplyText(line, ""))
	}
	return nil
}

// capa runs CAPA and returns its lines, or nil when upstream does not
// know the command.
func (u *upstreamConn) capa() ([]string, error) {
	if err := u.writeLine("CAPA"); err != nil {
		return nil, err
	}
	line, err := u.readLine()
	if err != nil {
		return nil, fmt.Errorf("reading CAPA reply: %w", err)
	}
	if !isOK(line) {
		return nil, nil
	}
	caps := []string{}
	for {
		line, err := u.readLine()
		if err != nil {
			return nil, fmt.Errorf("reading CAPA reply: %w", err)
		}
		if line == "." {
			return caps, nil
		}
		if len(caps) >= maxCapaLines {
			return nil, errors.New("upstream CAPA too long")
		}
		caps = append(caps, line)
	}
}

// authenticate runs AUTH (RFC 5034) with c: the command alone, then the
// initial response on its own line after upstream's "+", as Exchange
// Online expects. A "+" after the response is an error challenge
// (RFC 7628 §3.2.3), answered with an empty line; upstream's -ERR
// follows.
func (u *upstreamConn) authenticate(c sasl.Client) error {
	mech, ir, err := c.Start()
	if err != nil {
		return fmt.Errorf("starting SASL: %w", err)
	}
	step := "AUTH " + mech
	if err := u.writeLine(step); err != nil {
		return err
	}
	line, err := u.readLine()
	if err != nil {
		return fmt.Errorf("reading AUTH reply: %w", err)
	}
	switch {
	case isErr(line):
		return &rejection{Step: step, Text: errText(line)}
	case !isContinuation(line):
		return fmt.Errorf("unexpected reply to %s: %q", step, proxy.ReplyText(line, ""))
	}
	if err := u.writeLine(base64.StdEncoding.EncodeToString(ir)); err != nil {
		return err
	}
	var challenge []byte
	for n := 0; ; n++ {
		line, err := u.readLine()
		if err != nil {
			return fmt.Errorf("reading AUTH reply: %w", err)
		}
		switch {
		case isOK(line):
			return nil
		case isErr(line):
			return &rejection{Step: step, Text: errText(line), Challenge: challenge}
		case !isContinuation(line) || n >= maxErrorChallenges:
			return fmt.Errorf("unexpected reply to %s: %q", step, proxy.ReplyText(line, ""))
		}
		challenge, _ = base64.StdEncoding.DecodeString(strings.TrimSpace(line[1:]))
		// Recorded by the client (xoauth2.Client.Challenge); the answer
		// is empty whatever it says.
		c.Next(challenge)
		if err := u.writeLine(""); err != nil {
			return err
		}
	}
}

// quit ends a connection that logged in nobody.
func (u *upstreamConn) quit() {
	u.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if u.writeLine("QUIT") == nil {
		u.readLine()
	}
}

func (u *upstreamConn) writeLine(s string) error {
	if _, err := io.WriteString(u.conn, s+"\r\n"); err != nil {
		return fmt.Errorf("writing to upstream: %w", err)
	}
	return nil
}

// readLine reads one line without its line end.
func (u *upstreamConn) readLine() (string, error) {
	line, err := proxy.ReadUpstreamLine(u.br, maxUpstreamLine)
	return string(line), err
}

// isOK, isErr and isContinuation tell POP3's status indicators apart
// (RFC 1939 §3; "+ " is RFC 5034's continuation).
func isOK(line string) bool {
	return strings.HasPrefix(strings.ToUpper(line), "+OK") && (len(line) == 3 || line[3] == ' ')
}

func isErr(line string) bool {
	return strings.HasPrefix(strings.ToUpper(line), "-ERR") && (len(line) == 4 || line[4] == ' ')
}

func isContinuation(line string) bool { return line == "+" || strings.HasPrefix(line, "+ ") }

// errText is the text of an -ERR line.
func errText(line string) string { return strings.TrimSpace(line[len("-ERR"):]) }

func upstreamUnavailable(err error) *proxy.LoginError {
	return &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: err}
}

// upstreamLoginError classifies an upstream failure: a refusal (unless it
// says to come back later) is about the account; anything else is
// temporary.
func upstreamLoginError(err error) *proxy.LoginError {
	if errors.Is(err, errNoSASL) {
		return &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonNotPOP3, Err: err}
	}
	var rej *rejection
	if errors.As(err, &rej) {
		if e, ok := explain(rej.Text); !ok || !e.temporary {
			return &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonRefused, Err: err}
		}
	}
	return upstreamUnavailable(err)
}

// classifyFailure classifies a failed upstream login for the login
// pipeline: upstream's -ERR is a refusal, explained if known.
func classifyFailure(err error) (le *proxy.LoginError, advice string, refusal error) {
	le = upstreamLoginError(err)
	if errors.Is(err, errNoSASL) {
		return le, "the account sends over Microsoft Graph, which has no POP3; give POP3 clients an account that logs in to Exchange", nil
	}
	var rej *rejection
	if !errors.As(err, &rej) {
		return le, "", nil
	}
	if e, ok := explain(rej.Text); ok {
		advice = e.advice
	}
	return le, advice, rej
}

// loginUpstream logs in upstream with up.SASL, on a warm connection or a
// new one. ctx allows for the wait for a mailbox slot too.
func (s *Server) loginUpstream(ctx context.Context, tc *proxy.Conn, up *proxy.Upstream) (*upstreamConn, error) {
	if up.SASL == nil {
		return nil, errNoSASL
	}
	ctx, cancel := context.WithTimeout(ctx, s.Limits.LoginTimeout)
	defer cancel()
	var u *upstreamConn
	err := s.LoginOnUpstream(ctx, tc, func(g *proxy.Greeted) error {
		u = &upstreamConn{conn: g.Conn, br: g.Reader}
		return u.authenticate(up.SASL)
	})
	if err != nil {
		return nil, err
	}
	return u, nil
}
