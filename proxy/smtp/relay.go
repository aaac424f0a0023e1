package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/mailbroker/broker/proxy"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"
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

// relayConn is one authenticated upstream connection and the mailbox
// slot it holds.
type relayConn struct {
	c       *gosmtp.Client
	conn    net.Conn // the TCP connection, for deadlines and abrupt close
	release func()

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

// dialUpstream connects to upstream and secures the connection: TLS from
// the first byte, or STARTTLS, which is mandatory. It returns with the
// post-TLS EHLO done. ctx bounds it all.
func (s *Server) dialUpstream(ctx context.Context, tc *proxy.Conn) (*gosmtp.Client, net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", s.opts.Upstream)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to %s: %w", s.opts.Upstream, err)
	}
	if tc != nil && !tc.Attach(conn) {
		return nil, nil, net.ErrClosed
	}
	// go-smtp's client sets its own deadlines per command; closing the
	// connection is what bounds the whole exchange.
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	c, err := s.secureUpstream(conn)
	if !stop() {
		err = fmt.Errorf("connecting to %s: %w", s.opts.Upstream, context.Cause(dctx))
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	s.caps.Store(extensionsOf(c))
	return c, conn, nil
}

func (s *Server) secureUpstream(conn net.Conn) (*gosmtp.Client, error) {
	if s.opts.UpstreamImplicitTLS {
		c := gosmtp.NewClient(tls.Client(conn, s.upstreamTLS))
		s.setClientTimeouts(c)
		if err := c.Hello(s.hostname); err != nil {
			return nil, err
		}
		return c, nil
	}
	// NewClientStartTLS checks that STARTTLS is offered before sending it;
	// its EHLO before TLS says "localhost", which no server minds.
	c, err := gosmtp.NewClientStartTLS(conn, s.upstreamTLS)
	if err != nil {
		if strings.Contains(err.Error(), "doesn't support STARTTLS") {
			return nil, errNoSTARTTLS
		}
		return nil, err
	}
	s.setClientTimeouts(c)
	if err := c.Hello(s.hostname); err != nil {
		return nil, err
	}
	if _, ok := c.TLSConnectionState(); !ok {
		return nil, errNoSTARTTLS
	}
	return c, nil
}

func (s *Server) setClientTimeouts(c *gosmtp.Client) {
	c.CommandTimeout = s.opts.CommandTimeout
	c.SubmissionTimeout = s.opts.DataTimeout
}

// loginUpstream takes a slot of up.Account, connects and authenticates
// with up.SASL. The returned connection holds the slot until closed.
func (s *Server) loginUpstream(ctx context.Context, tc *proxy.Conn, up *proxy.Upstream) (*relayConn, error) {
	release, err := s.srv.TakeSlot(ctx, tc, up.Account)
	if err != nil {
		return nil, err
	}
	c, conn, err := s.dialUpstream(ctx, tc)
	if err != nil {
		release()
		return nil, err
	}
	u := &relayConn{c: c, conn: conn, release: release}
	if ok := c.SupportsAuth(xoauth2.Mechanism); !ok {
		u.close()
		return nil, errNoXOAUTH2
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	err = c.Auth(up.SASL)
	if !stop() {
		err = context.Cause(ctx)
	}
	if err != nil {
		u.close()
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

// quit ends the connection politely and frees its slot.
func (u *relayConn) quit() {
	u.conn.SetDeadline(time.Now().Add(quitTimeout))
	u.c.Quit()
	u.close()
}

// close drops the connection at once: upstream discards a message whose
// DATA was not finished with the final dot.
func (u *relayConn) close() {
	u.closeOnce.Do(func() {
		u.conn.Close()
		u.release()
	})
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
