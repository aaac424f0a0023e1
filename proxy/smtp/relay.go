package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// quitTimeout bounds the QUIT sent when a session ends: the message
// was already accepted, so upstream's goodbye is not worth waiting for.
const quitTimeout = 5 * time.Second

// Client-visible reasons of upstream failures. The detail goes to the log.
const (
	reasonUnavailable = "Upstream server unavailable, try again later"
	reasonRefused     = "Mailbox login refused by the mail server, contact your administrator"
)

var (
	errNoSTARTTLS = errors.New("upstream offers no STARTTLS; refusing to send a token in clear text")
	errNoXOAUTH2  = errors.New("upstream does not offer AUTH XOAUTH2")
)

// relay is the Dialer of the SMTP relay, the default upstream: a
// submission server over STARTTLS (mandatory: no STARTTLS, no token) or
// implicit TLS (RFC 8314), logged in to with AUTH XOAUTH2 (RFC 4954).
type relay struct {
	addr           string
	implicitTLS    bool
	tls            *tls.Config
	hostname       string
	dialTimeout    time.Duration
	commandTimeout time.Duration
	dataTimeout    time.Duration
	// seen keeps upstream's extensions as each connection found them.
	seen *atomic.Pointer[extensions]
	// obs times the logins' connections and AUTH.
	obs proxy.Observer
}

var (
	_ Dialer   = (*relay)(nil)
	_ Upstream = (*relayConn)(nil)
)

// relayConn is one authenticated connection of the SMTP relay.
type relayConn struct {
	c       *gosmtp.Client
	conn    net.Conn // the TCP connection, for deadlines and abrupt close
	timeout time.Duration

	closeOnce sync.Once
}

// extensions are the upstream extensions the local side advertises.
type extensions struct {
	size     int64
	smtpUTF8 bool
	dsn      bool
}

var defaultExtensions = &extensions{size: DefaultMaxMessageBytes, smtpUTF8: true, dsn: true}

func extensionsOf(c *gosmtp.Client) *extensions {
	caps := &extensions{}
	if _, v := c.Extension("SIZE"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			caps.size = n
		}
	}
	caps.smtpUTF8, _ = c.Extension("SMTPUTF8")
	caps.dsn, _ = c.Extension("DSN")
	return caps
}

// dial connects to upstream and secures the connection: TLS from the
// first byte, or STARTTLS, which is mandatory. It returns with the
// post-TLS EHLO done. ctx bounds it all. tc, if not nil, closes the
// connection when the session ends.
func (r *relay) dial(ctx context.Context, tc *proxy.Conn) (*gosmtp.Client, net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, r.dialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", r.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to %s: %w", r.addr, err)
	}
	if tc != nil && !tc.Attach(conn) {
		return nil, nil, net.ErrClosed
	}
	// go-smtp's client sets its own deadlines per command; closing the
	// connection is what bounds the whole exchange.
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	c, err := r.secure(conn)
	if !stop() {
		err = fmt.Errorf("connecting to %s: %w", r.addr, context.Cause(dctx))
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	r.seen.Store(extensionsOf(c))
	return c, conn, nil
}

func (r *relay) secure(conn net.Conn) (*gosmtp.Client, error) {
	if r.implicitTLS {
		c := gosmtp.NewClient(tls.Client(conn, r.tls))
		r.setClientTimeouts(c)
		if err := c.Hello(r.hostname); err != nil {
			return nil, err
		}
		return c, nil
	}
	// NewClientStartTLS checks that STARTTLS is offered before sending it;
	// its EHLO before TLS says "localhost", which no server minds.
	c, err := gosmtp.NewClientStartTLS(conn, r.tls)
	if err != nil {
		if strings.Contains(err.Error(), "doesn't support STARTTLS") {
			return nil, errNoSTARTTLS
		}
		return nil, err
	}
	r.setClientTimeouts(c)
	if err := c.Hello(r.hostname); err != nil {
		return nil, err
	}
	if _, ok := c.TLSConnectionState(); !ok {
		return nil, errNoSTARTTLS
	}
	return c, nil
}

func (r *relay) setClientTimeouts(c *gosmtp.Client) {
	c.CommandTimeout = r.commandTimeout
	c.SubmissionTimeout = r.dataTimeout
}

// Dial connects and authenticates with AUTH XOAUTH2. A refusal is a
// *rejection.
func (r *relay) Dial(ctx context.Context, tc *proxy.Conn, up *proxy.Upstream) (Upstream, error) {
	start := time.Now()
	c, conn, err := r.dial(ctx, tc)
	r.obs.UpstreamConnect(proxy.SMTP, time.Since(start), err)
	if err != nil {
		return nil, err
	}
	u := &relayConn{c: c, conn: conn, timeout: r.commandTimeout}
	if ok := c.SupportsAuth(xoauth2.Mechanism); !ok {
		u.Close()
		return nil, errNoXOAUTH2
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	start = time.Now()
	err = c.Auth(up.SASL)
	if !stop() {
		err = context.Cause(ctx)
	}
	r.obs.UpstreamAuth(proxy.SMTP, time.Since(start), err)
	if err != nil {
		u.Close()
		var se *gosmtp.SMTPError
		if errors.As(err, &se) {
			return nil, &rejection{reply: se, challenge: challengeOf(up)}
		}
		return nil, err
	}
	return u, nil
}

func challengeOf(up *proxy.Upstream) []byte {
	if c, ok := up.SASL.(xoauth2.Client); ok {
		return c.Challenge()
	}
	return nil
}

func (u *relayConn) Mail(from string, opts *gosmtp.MailOptions) error { return u.c.Mail(from, opts) }
func (u *relayConn) Rcpt(to string, opts *gosmtp.RcptOptions) error   { return u.c.Rcpt(to, opts) }
func (u *relayConn) Reset() error                                     { return u.c.Reset() }

func (u *relayConn) Data() (MessageWriter, error) {
	w, err := u.c.Data()
	if err != nil {
		return nil, err
	}
	return &relayData{w: w, conn: u.conn, timeout: u.timeout}, nil
}

// Quit ends the connection politely.
func (u *relayConn) Quit() {
	u.conn.SetDeadline(time.Now().Add(quitTimeout))
	u.c.Quit()
	u.Close()
}

// Close drops the connection at once: upstream discards a message whose
// DATA was not finished with the final dot.
func (u *relayConn) Close() {
	u.closeOnce.Do(func() { u.conn.Close() })
}

// relayData streams a message to upstream's DATA.
type relayData struct {
	w       *gosmtp.DataCommand
	conn    net.Conn
	timeout time.Duration
}

// Write gives each write to upstream its own deadline.
func (m *relayData) Write(p []byte) (int, error) {
	m.conn.SetWriteDeadline(time.Now().Add(m.timeout))
	return m.w.Write(p)
}

func (m *relayData) Close() (string, error) {
	resp, err := m.w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// rejection is upstream's refusal of the XOAUTH2 login.
type rejection struct {
	reply     *gosmtp.SMTPError
	challenge []byte // the decoded SASL error challenge, if one was sent
}

func (e *rejection) Error() string {
	msg := fmt.Sprintf("upstream refused AUTH XOAUTH2: %d %d.%d.%d %s", e.reply.Code,
		e.reply.EnhancedCode[0], e.reply.EnhancedCode[1], e.reply.EnhancedCode[2], e.reply.Message)
	if len(e.challenge) > 0 {
		msg += " (challenge " + string(e.challenge) + ")"
	}
	return msg
}

// loginError classifies a failure to log in upstream: a permanent
// refusal is about the account; anything else is temporary.
func loginError(err error) *proxy.LoginError {
	var le *proxy.LoginError
	if errors.As(err, &le) {
		return le // already classified, e.g. by a Graph upstream
	}
	var rej *rejection
	switch {
	case errors.As(err, &rej):
		if e, ok := explain(rej.reply); !(ok && e.temporary) && rej.reply.Code >= 500 {
			return &proxy.LoginError{Kind: proxy.KindAccount, Reason: reasonRefused, Err: err}
		}
	case errors.Is(err, errNoSTARTTLS), errors.Is(err, errNoXOAUTH2):
		// A configuration matter, but the token is not to blame and the
		// client should keep its mail: temporary.
	}
	return &proxy.LoginError{Kind: proxy.KindUnavailable, Reason: reasonUnavailable, Err: err}
}
