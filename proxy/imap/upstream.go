package imap

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
	// DefaultDialTimeout bounds connecting to upstream: TCP and TLS
	// handshake.
	DefaultDialTimeout = 15 * time.Second
	// DefaultLoginTimeout bounds a whole login: the Authenticator, the
	// dial and the upstream SASL exchange.
	DefaultLoginTimeout = 45 * time.Second

	// maxUpstreamLine bounds one upstream response line during login.
	maxUpstreamLine = 64 << 10
	// upstreamReadBuffer is the upstream reader's size during login; the
	// reader is dropped once the session is spliced.
	upstreamReadBuffer = 4 << 10
)

// Client-visible reasons of upstream failures. The detail goes to the log.
const (
	reasonUnavailable = "Upstream server unavailable, try again later"
	reasonRefused     = "Mailbox login refused by the mail server, contact your administrator"
)

// rejection is upstream's tagged NO or BAD to a login step.
type rejection struct {
	Status    string // NO or BAD
	Text      string // upstream's response text
	Challenge []byte // the decoded SASL error challenge, if one was sent
}

func (e *rejection) Error() string {
	msg := "upstream " + e.Status + " " + e.Text
	if len(e.Challenge) > 0 {
		msg += " (challenge " + string(e.Challenge) + ")"
	}
	return msg
}

// upstreamSession is an upstream connection during login.
type upstreamSession struct {
	conn net.Conn
	br   *bufio.Reader
	// caps are upstream's capabilities after login.
	caps []string
}

func upstreamUnavailable(err error) *proxy.LoginError {
	return &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: err}
}

// loginError classifies an upstream failure: a refusal (unless it says to
// come back later) is about the account; anything else is temporary.
func upstreamLoginError(err error) *proxy.LoginError {
	var rej *rejection
	if errors.As(err, &rej) {
		if e, ok := explain(rej.Text); !ok || !e.temporary {
			return &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonRefused, Err: err}
		}
	}
	return upstreamUnavailable(err)
}

// loginUpstream logs in upstream with up.SASL, on a warm connection or a
// new one.
func (s *Server) loginUpstream(ctx context.Context, tc *proxy.Conn, up *proxy.Upstream) (*upstreamSession, error) {
	// ctx allows for the wait for a mailbox slot too.
	ctx, cancel := context.WithTimeout(ctx, s.Limits.LoginTimeout)
	defer cancel()
	var u *upstreamSession
	err := s.LoginOnUpstream(ctx, tc, func(g *proxy.Greeted) error {
		u = &upstreamSession{conn: g.Conn, br: g.Reader}
		return u.login(up.SASL, g.Caps)
	})
	if err != nil {
		return nil, err
	}
	return u, nil
}

// greet reads a new connection's greeting and, unless the greeting
// carries them, its capabilities: all that comes before the login, done
// ahead of it on a warm connection.
func greet(g *proxy.Greeted) error {
	u := &upstreamSession{conn: g.Conn, br: g.Reader}
	caps, err := u.greet()
	g.Caps = caps
	return err
}

func (u *upstreamSession) greet() ([]string, error) {
	caps, err := u.greeting()
	if err != nil || caps != nil {
		return caps, err
	}
	return u.capability("A0")
}

// login authenticates with c on a greeted connection whose capabilities
// are caps. It leaves upstream's post-login capabilities in u.caps.
func (u *upstreamSession) login(c sasl.Client, caps []string) error {
	if err := u.authenticate("A1", c, hasCap(caps, "SASL-IR")); err != nil {
		return err
	}
	if u.caps == nil {
		// Exchange sends none with its OK; a refused mailbox shows here as
		// "BAD User is authenticated but not connected".
		caps, err := u.capability("A2")
		if err != nil {
			return err
		}
		u.caps = caps
	}
	return nil
}

// greeting reads upstream's greeting (RFC 3501 §7.1) and returns the
// capabilities it carries, or nil.
func (u *upstreamSession) greeting() ([]string, error) {
	line, err := u.readLine()
	if err != nil {
		return nil, fmt.Errorf("reading greeting: %w", err)
	}
	tag, status, code, _ := parseResponse(line)
	if tag != "*" || status != "OK" {
		return nil, fmt.Errorf("unexpected greeting %q", truncate(line, 200))
	}
	return capsOfCode(code), nil
}

// capability runs CAPABILITY and returns its result (RFC 3501 §6.1.1).
func (u *upstreamSession) capability(tag string) ([]string, error) {
	if err := u.writeLine(tag + " CAPABILITY"); err != nil {
		return nil, err
	}
	caps := []string{}
	for {
		line, err := u.readLine()
		if err != nil {
			return nil, fmt.Errorf("reading CAPABILITY response: %w", err)
		}
		t, status, code, text := parseResponse(line)
		switch {
		case t == "*" && status == "CAPABILITY":
			caps = strings.Fields(text)
		case t == "*" && status == "BYE":
			return nil, fmt.Errorf("upstream closing: %q", truncate(text, 200))
		case t == tag && status == "OK":
			if c := capsOfCode(code); c != nil {
				caps = c
			}
			return caps, nil
		case t == tag:
			return nil, &rejection{Status: status, Text: text}
		}
	}
}

// authenticate runs AUTHENTICATE (RFC 3501 §6.2.2) with an initial response
// if upstream offers SASL-IR (RFC 4959).
func (u *upstreamSession) authenticate(tag string, c sasl.Client, useIR bool) error {
	mech, ir, err := c.Start()
	if err != nil {
		return fmt.Errorf("starting SASL: %w", err)
	}
	cmd := tag + " AUTHENTICATE " + mech
	if useIR && ir != nil {
		cmd += " " + encodeSASL(ir)
		ir = nil
	}
	if err := u.writeLine(cmd); err != nil {
		return err
	}
	var challenge []byte
	for {
		line, err := u.readLine()
		if err != nil {
			return fmt.Errorf("reading AUTHENTICATE response: %w", err)
		}
		if line == "+" || strings.HasPrefix(line, "+ ") {
			var resp []byte
			if ir != nil {
				resp, ir = ir, nil
			} else {
				challenge, err = base64.StdEncoding.DecodeString(strings.TrimPrefix(line[1:], " "))
				if err == nil {
					resp, err = c.Next(challenge)
				}
				if err != nil {
					// Cancel; upstream answers with a tagged BAD.
					if err := u.writeLine("*"); err != nil {
						return err
					}
					continue
				}
			}
			if err := u.writeLine(base64.StdEncoding.EncodeToString(resp)); err != nil {
				return err
			}
			continue
		}
		t, status, code, text := parseResponse(line)
		switch {
		case t == "*" && status == "CAPABILITY":
			u.caps = strings.Fields(text)
		case t == "*" && status == "BYE":
			return fmt.Errorf("upstream closing: %q", truncate(text, 200))
		case t == tag && status == "OK":
			if caps := capsOfCode(code); caps != nil {
				u.caps = caps
			}
			return nil
		case t == tag:
			return &rejection{Status: status, Text: text, Challenge: challenge}
		}
	}
}

// encodeSASL encodes a SASL initial response; "=" is the empty one.
func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64.StdEncoding.EncodeToString(b)
}

func (u *upstreamSession) writeLine(s string) error {
	if _, err := io.WriteString(u.conn, s+"\r\n"); err != nil {
		return fmt.Errorf("writing to upstream: %w", err)
	}
	return nil
}

// readLine reads one response line without CRLF. Literals are not expected
// before login and are refused.
func (u *upstreamSession) readLine() (string, error) {
	line, err := proxy.ReadUpstreamLine(u.br, maxUpstreamLine)
	if err != nil {
		return "", err
	}
	if literalMarkerLen(line) > 0 {
		return "", fmt.Errorf("unexpected literal in upstream response %q", truncate(string(line), 200))
	}
	return string(line), nil
}

// parseResponse splits a status or data response: tag, an upper-cased
// status or data keyword, the response code without brackets, and the rest.
func parseResponse(line string) (tag, status, code, text string) {
	tag, rest, _ := strings.Cut(line, " ")
	status, rest, _ = strings.Cut(rest, " ")
	status = strings.ToUpper(status)
	if strings.HasPrefix(rest, "[") {
		if i := strings.IndexByte(rest, ']'); i > 0 {
			code, rest = rest[1:i], strings.TrimPrefix(rest[i+1:], " ")
		}
	}
	return tag, status, code, rest
}

// capsOfCode returns the capabilities of a CAPABILITY response code, or nil.
func capsOfCode(code string) []string {
	name, rest, _ := strings.Cut(code, " ")
	if !strings.EqualFold(name, "CAPABILITY") {
		return nil
	}
	return append([]string{}, strings.Fields(rest)...)
}

func hasCap(caps []string, c string) bool {
	for _, x := range caps {
		if strings.EqualFold(x, c) {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
