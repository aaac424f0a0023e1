package smtp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
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
	conn    net.Conn  // the TCP connection, for deadlines and abrupt close
	wire    *tls.Conn // what c speaks over, for message data
	bw      *bufio.Writer
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
func (r *relay) dial(ctx context.Context, tc *proxy.Conn) (*gosmtp.Client, *tls.Conn, error) {
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
	c, wire, err := r.secure(conn)
	if !stop() {
		err = fmt.Errorf("connecting to %s: %w", r.addr, context.Cause(dctx))
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	r.seen.Store(extensionsOf(c))
	return c, wire, nil
}

func (r *relay) secure(conn net.Conn) (*gosmtp.Client, *tls.Conn, error) {
	var c *gosmtp.Client
	var tc *tls.Conn
	if r.implicitTLS {
		tc = tls.Client(conn, r.tls)
		c = gosmtp.NewClient(tc)
	} else {
		var err error
		if tc, err = r.startTLS(conn); err != nil {
			return nil, nil, err
		}
		// A client of its own would wait for a greeting, which came
		// before STARTTLS.
		c = gosmtp.NewClient(&greeted{Conn: tc, greeting: strings.NewReader("220 TLS started\r\n")})
	}
	r.setClientTimeouts(c)
	if err := c.Hello(r.hostname); err != nil {
		return nil, nil, err
	}
	return c, tc, nil
}

// greeted is a connection that starts with a greeting read before.
type greeted struct {
	*tls.Conn
	greeting *strings.Reader
}

func (g *greeted) Read(p []byte) (int, error) {
	if g.greeting.Len() > 0 {
		return g.greeting.Read(p)
	}
	return g.Conn.Read(p)
}

// startTLS says EHLO and STARTTLS in clear text, as go-smtp's
// NewClientStartTLS does, but keeps the TLS connection, into which
// message data goes directly (relayData). Its EHLO before TLS says
// "localhost", which no server minds.
func (r *relay) startTLS(conn net.Conn) (*tls.Conn, error) {
	c := gosmtp.NewClient(conn)
	r.setClientTimeouts(c)
	if err := c.Hello("localhost"); err != nil {
		return nil, err
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		return nil, errNoSTARTTLS
	}
	// c's reader holds nothing: the server said nothing after EHLO's
	// reply. Whatever it sends between STARTTLS's reply and TLS is
	// dropped, failing the handshake, never read as a reply under TLS.
	conn.SetDeadline(time.Now().Add(r.commandTimeout))
	defer conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "STARTTLS\r\n"); err != nil {
		return nil, err
	}
	if _, _, err := textproto.NewReader(bufio.NewReader(conn)).ReadResponse(220); err != nil {
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	return tls.Client(conn, r.tls), nil
}

func (r *relay) setClientTimeouts(c *gosmtp.Client) {
	c.CommandTimeout = r.commandTimeout
	c.SubmissionTimeout = r.dataTimeout
}

// Dial connects and authenticates with AUTH XOAUTH2. A refusal is a
// *rejection.
func (r *relay) Dial(ctx context.Context, tc *proxy.Conn, up *proxy.Upstream) (Upstream, error) {
	start := time.Now()
	c, wire, err := r.dial(ctx, tc)
	r.obs.UpstreamConnect(proxy.SMTP, time.Since(start), err)
	if err != nil {
		return nil, err
	}
	conn := wire.NetConn()
	u := &relayConn{c: c, conn: conn, wire: wire, timeout: r.commandTimeout}
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
	// One buffer serves the connection's messages, kept or not.
	if u.bw == nil {
		u.bw = bufio.NewWriterSize(&deadlineWriter{w: u.wire, timeout: u.timeout}, copyBuffer)
	} else {
		u.bw.Reset(&deadlineWriter{w: u.wire, timeout: u.timeout})
	}
	m := &relayData{cmd: w, bw: u.bw}
	m.stuff.w = wireWriterFunc(m.WriteWire)
	return m, nil
}

// Quit ends the connection politely.
func (u *relayConn) Quit() {
	// go-smtp sets each command's deadline from CommandTimeout.
	u.c.CommandTimeout = quitTimeout
	u.c.Quit()
	u.Close()
}

// Close drops the connection at once: upstream discards a message whose
// DATA was not finished with the final dot.
func (u *relayConn) Close() {
	u.closeOnce.Do(func() { u.conn.Close() })
}

// relayData streams a message to upstream's DATA. The data goes to the
// TLS connection through its own buffer, not through cmd, whose writer
// dot-stuffs a byte at a time; cmd writes the final dot.
type relayData struct {
	cmd   *gosmtp.DataCommand
	bw    *bufio.Writer
	stuff stuffer
	// held is the CRLF (or CR) last written, sent once more data follows:
	// cmd's final dot comes with a CRLF of its own.
	held []byte
}

var _ wireWriter = (*relayData)(nil)

func (m *relayData) Write(p []byte) (int, error) { return m.stuff.Write(p) }

func (m *relayData) WriteWire(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(m.held) == 1 && len(p) == 1 && p[0] == '\n' {
		m.held = crlf
		return 1, nil
	}
	if len(m.held) > 0 {
		if _, err := m.bw.Write(m.held); err != nil {
			return 0, err
		}
	}
	m.held = nil
	switch {
	case bytes.HasSuffix(p, crlf):
		m.held = crlf
	case p[len(p)-1] == '\r':
		m.held = crlf[:1]
	}
	if _, err := m.bw.Write(p[:len(p)-len(m.held)]); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (m *relayData) Close() (string, error) {
	if err := m.bw.Flush(); err != nil {
		return "", err
	}
	resp, err := m.cmd.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// deadlineWriter gives each write its own deadline: relayData's buffer
// makes them few and large.
type deadlineWriter struct {
	w       net.Conn
	timeout time.Duration
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.w.SetWriteDeadline(time.Now().Add(d.timeout))
	return d.w.Write(p)
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
