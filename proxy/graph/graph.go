// Package graph is the Microsoft Graph upstream of the SMTP proxy: for
// accounts whose tenant keeps SMTP AUTH off, a session's messages go out
// through Graph's mail API (sendMail, or a draft with upload sessions and
// send) instead of smtp.office365.com. It implements smtp.Dialer and
// smtp.Upstream; the local SMTP side is unchanged.
//
// Each message is received whole into a spool (spool.go: a file without a
// name, encrypted under a key only memory holds), so that memory stays
// flat for Exchange's 150 MB, and only then sent: up to about 3 MB, when
// its header's recipients are the envelope's, with one sendMail of the
// MIME message; otherwise as a draft made from the MIME message without
// its large attachments, whose recipients are set from the envelope (Bcc
// for those not in the header), each large attachment uploaded through an
// upload session, then sent. The client's 250 is Graph's 202.
package graph

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/smtp"
)

// Defaults and Graph's limits.
const (
	// DefaultMaxMessageBytes is Exchange Online's largest message.
	DefaultMaxMessageBytes = 157286400
	// DefaultMaxConcurrentPerMailbox is Graph's limit of concurrent
	// requests per app and mailbox; more get 429.
	DefaultMaxConcurrentPerMailbox = 4
	// DefaultRetryBudget bounds how long a message waits in all for Graph
	// to stop throttling (429) or recover (503, 504).
	DefaultRetryBudget = 2 * time.Minute
	// DefaultRequestTimeout bounds one request, its body included.
	DefaultRequestTimeout = 3 * time.Minute
	// DefaultMessageTimeout bounds the whole sending of one message,
	// retries included; it stays below the 10 minutes an SMTP client
	// waits for the reply to the end of DATA (RFC 5321 §4.5.3.2.6).
	DefaultMessageTimeout = 9 * time.Minute
	// maxRecipients is Exchange's limit of recipients per message.
	maxRecipients = 500
	// maxRequestBytes is Graph's limit of a request's body (4 MB).
	maxRequestBytes = 4 << 20
	// maxInlineMIME is the largest MIME message sent in one request, as
	// base64 (4/3 of it) with room to spare under maxRequestBytes.
	maxInlineMIME = 3_000_000
	// uploadThreshold: attachments of at least this many bytes go through
	// an upload session (Graph takes them from 2 MiB; smaller ones fit a
	// request).
	uploadThreshold = 2 << 20
	// chunkBytes is the size of each PUT of an upload session: at most
	// 4 MiB, and a multiple of 320 KiB, which every kind of upload session
	// accepts.
	chunkBytes = 12 * 320 << 10
)

// Options configure the Graph upstream.
type Options struct {
	// URL returns Microsoft Graph's service root for an account, such as
	// "https://graph.microsoft.com" (its cloud's). Required.
	URL func(account string) string
	// TLS configures the HTTPS client (RootCAs for tests). Its MinVersion
	// is at least TLS 1.2.
	TLS *tls.Config
	// Logger receives a line per message that is not sent, with the
	// administrator's fix. Nil means slog.Default().
	Logger *slog.Logger
	// SaveToSentItems keeps a copy of each message in the mailbox's Sent
	// Items, as SMTP AUTH submission does.
	SaveToSentItems bool
	// MaxMessageBytes: DefaultMaxMessageBytes.
	MaxMessageBytes int64
	// MaxConcurrentPerMailbox: DefaultMaxConcurrentPerMailbox.
	MaxConcurrentPerMailbox int
	// RetryBudget: DefaultRetryBudget.
	RetryBudget time.Duration
	// RequestTimeout: DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MessageTimeout: DefaultMessageTimeout.
	MessageTimeout time.Duration
	// SpoolDir is where messages are spooled (encrypted, without a
	// name). "" is os.TempDir().
	SpoolDir string
	// Hostname is the right side of the Message-ID given to messages
	// that have none. Default "localhost".
	Hostname string
	// LookupDelays are the waits before each look-up of a message in Sent
	// Items when a send's outcome is unknown. Default 0, 1s, 2s.
	LookupDelays []time.Duration
	// Observer is told, as protocol SMTP, of the upstream's connections
	// and authentications: UpstreamConnect for each new HTTPS connection
	// to Graph (TCP and TLS; requests on a kept-alive connection make
	// none), UpstreamAuth for each fetch of a token (a login's, and the
	// new one after Graph refused a token). Nil means no observer.
	Observer proxy.Observer
}

// Dialer opens Graph upstreams. It is safe for concurrent use; one serves
// every session.
type Dialer struct {
	opts   Options
	log    *slog.Logger
	client *http.Client
	slots  *proxy.Slots
	obs    proxy.Observer

	mu        sync.Mutex
	mailboxes map[string]*mailboxState
}

var (
	_ smtp.Dialer   = (*Dialer)(nil)
	_ smtp.Upstream = (*upstream)(nil)
)

// NewDialer returns a Dialer configured by opts, which it copies.
func NewDialer(opts *Options) *Dialer {
	d := &Dialer{opts: *opts, mailboxes: make(map[string]*mailboxState)}
	o := &d.opts
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	proxy.SetDefault(&o.MaxConcurrentPerMailbox, DefaultMaxConcurrentPerMailbox)
	proxy.SetDefault(&o.RetryBudget, DefaultRetryBudget)
	proxy.SetDefault(&o.RequestTimeout, DefaultRequestTimeout)
	proxy.SetDefault(&o.MessageTimeout, DefaultMessageTimeout)
	if o.Hostname == "" {
		o.Hostname = "localhost"
	}
	if o.LookupDelays == nil {
		o.LookupDelays = []time.Duration{0, time.Second, 2 * time.Second}
	}
	d.log = o.Logger
	if d.log == nil {
		d.log = slog.Default()
	}
	d.log = d.log.With("proto", string(proxy.SMTP), "via", string(proxy.ViaGraph))
	var tc *tls.Config
	if o.TLS != nil {
		tc = o.TLS.Clone()
	} else {
		tc = &tls.Config{}
	}
	tc.MinVersion = max(tc.MinVersion, tls.VersionTLS12)
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   16,
		WriteBufferSize:       64 << 10,
		ReadBufferSize:        16 << 10,
	}
	d.client = &http.Client{
		Transport: tr,
		// Graph does not redirect mail requests; a redirect would carry
		// the token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	d.slots = proxy.NewSlots(o.MaxConcurrentPerMailbox)
	d.obs = proxy.ObserverOr(o.Observer)
	return d
}

// Close closes idle connections.
func (d *Dialer) Close() { d.client.CloseIdleConnections() }

func (d *Dialer) mailbox(account string) *mailboxState {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.mailboxes[account]
	if m == nil {
		m = &mailboxState{}
		d.mailboxes[account] = m
	}
	return m
}

// Dial opens the Graph upstream of a login: it gets a token now, so that
// an account that cannot get one is refused at AUTH, as with SMTP.
func (d *Dialer) Dial(ctx context.Context, c *proxy.Conn, up *proxy.Upstream) (smtp.Upstream, error) {
	if up.Bearer == nil {
		return nil, &proxy.LoginError{Kind: proxy.KindAccount, Reason: "Mailbox login refused, contact your administrator",
			Err: errNoBearer}
	}
	start := time.Now()
	_, err := up.Bearer(ctx)
	d.obs.UpstreamAuth(proxy.SMTP, time.Since(start), err)
	if err != nil {
		return nil, err
	}
	uctx, cancel := context.WithCancel(context.Background())
	u := &upstream{d: d, account: strings.ToLower(up.Account), bearer: up.Bearer, rejected: up.BearerRejected,
		ctx: uctx, cancel: cancel}
	if c != nil && !c.Attach(closerFunc(u.Close)) {
		cancel()
		return nil, net.ErrClosed
	}
	return u, nil
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

type constError string

func (e constError) Error() string { return string(e) }

const errNoBearer = constError("the account's Graph upstream has no token source")

// upstream is one session's Graph upstream: the envelope of the
// transaction in progress. Messages are sent one at a time.
type upstream struct {
	d       *Dialer
	account string
	bearer  func(context.Context) (string, error)
	// rejected: proxy.Upstream.BearerRejected; may be nil.
	rejected func(token string)
	ctx      context.Context // ends when the session does
	cancel   context.CancelFunc

	mu    sync.Mutex
	from  string
	rcpts []string
	msg   *messageWriter
}

func (u *upstream) Mail(from string, opts *gosmtp.MailOptions) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.from, u.rcpts = from, nil
	return nil
}

var errTooManyRcpts = &gosmtp.SMTPError{Code: 452, EnhancedCode: gosmtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}

func (u *upstream) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.rcpts) >= maxRecipients {
		return errTooManyRcpts
	}
	u.rcpts = append(u.rcpts, to)
	return nil
}

func (u *upstream) Data() (smtp.MessageWriter, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	sp, err := newSpool(u.d.opts.SpoolDir, u.d.opts.MaxMessageBytes)
	if err != nil {
		u.d.log.Error("cannot spool the message", "account", u.account, "dir", u.d.opts.SpoolDir, "err", err.Error())
		return nil, &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Cannot take the message now, try again later"}
	}
	u.msg = &messageWriter{u: u, spool: sp, from: u.from, rcpts: append([]string(nil), u.rcpts...)}
	return u.msg, nil
}

func (u *upstream) Reset() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.from, u.rcpts = "", nil
	return nil
}

func (u *upstream) Quit() { u.Close() }

// Close ends the session's upstream: a message being received or sent is
// abandoned (a request in flight is cancelled) and its spool dropped.
func (u *upstream) Close() {
	u.cancel()
	u.mu.Lock()
	m := u.msg
	u.msg = nil
	u.mu.Unlock()
	if m != nil {
		m.discard()
	}
}
