package m365sim

import (
	"context"
	"crypto/tls"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Microsoft Graph's limits for mail: the defaults of GraphOptions.
const (
	// DefaultGraphMaxConcurrent is Graph's (Exchange's) limit of
	// concurrent requests per app and mailbox; one more gets 429
	// ApplicationThrottled (MailboxConcurrency).
	DefaultGraphMaxConcurrent = 4
	// DefaultGraphRequestsPerWindow requests per app and mailbox in
	// GraphRequestWindow; one more gets 429.
	DefaultGraphRequestsPerWindow = 10000
	// GraphRequestWindow is the window of DefaultGraphRequestsPerWindow.
	GraphRequestWindow = 10 * time.Minute
	// DefaultGraphMaxRequestBytes is the request body limit of Graph (4
	// MB); a larger body gets 413.
	DefaultGraphMaxRequestBytes = 4 << 20
	// DefaultGraphMaxSendSize is the largest message a mailbox may send:
	// Exchange's ceiling, to which admins raise MaxSendSize (its default
	// is 35 MB). Larger gets ErrorMessageSizeExceeded.
	DefaultGraphMaxSendSize = 157286400
	// GraphMaxChunkBytes is the most bytes one PUT of an upload session
	// may carry.
	GraphMaxChunkBytes = 4 << 20
	// GraphMinUploadSessionSize: createUploadSession refuses smaller
	// attachments (ErrorAttachmentSizeShouldNotBeLessThanMinimumSize).
	// Microsoft's documentation says "3 MB"; the limit observed is 2 MiB,
	// which leaves no gap with the largest attachment that fits a 4 MB
	// POST in base64.
	GraphMinUploadSessionSize = 2 << 20
	// GraphMaxAttachmentSize is the largest attachment of an upload
	// session.
	GraphMaxAttachmentSize = 150 << 20
	// DefaultGraphUploadSessionLifetime is how long an uploadUrl works.
	DefaultGraphUploadSessionLifetime = 15 * time.Minute
)

// GraphEndpoint names an operation of the simulated Graph, for failure
// injection, holds and counters.
type GraphEndpoint string

const (
	GraphAnyEndpoint         GraphEndpoint = ""
	GraphSendMail            GraphEndpoint = "sendMail"            // POST /users/{id}/sendMail
	GraphCreateMessage       GraphEndpoint = "createMessage"       // POST /users/{id}/messages
	GraphGetMessage          GraphEndpoint = "getMessage"          // GET /users/{id}/messages/{msg}
	GraphUpdateMessage       GraphEndpoint = "updateMessage"       // PATCH /users/{id}/messages/{msg}
	GraphDeleteMessage       GraphEndpoint = "deleteMessage"       // DELETE /users/{id}/messages/{msg}
	GraphAddAttachment       GraphEndpoint = "addAttachment"       // POST …/messages/{msg}/attachments
	GraphCreateUploadSession GraphEndpoint = "createUploadSession" // POST …/attachments/createUploadSession
	GraphUploadChunk         GraphEndpoint = "uploadChunk"         // PUT or DELETE uploadUrl
	GraphSend                GraphEndpoint = "send"                // POST …/messages/{msg}/send
	GraphListMessages        GraphEndpoint = "listMessages"        // GET /users/{id}/mailFolders/{folder}/messages
)

// GraphOptions configure a simulated Graph. Zero values are Graph's.
type GraphOptions struct {
	// IMAP, if set, receives sent messages: each recipient that is one
	// of its mailboxes gets the message in INBOX (IMAP.Deliver), and the
	// sending mailbox gets a copy in "Sent Items" when it is saved.
	IMAP *IMAP
	// MaxConcurrent requests per app and mailbox. Default 4.
	MaxConcurrent int
	// RequestsPerWindow per app and mailbox in GraphRequestWindow (by
	// Entra's clock). Default 10000.
	RequestsPerWindow int
	// RetryAfter is the Retry-After of the simulator's own 429s. Default
	// one second.
	RetryAfter time.Duration
	// MaxRequestBytes bounds request bodies (PUT chunks: see
	// GraphMaxChunkBytes). Default 4 MiB.
	MaxRequestBytes int64
	// MaxSendSize is the mailboxes' MaxSendSize. Default 150 MB.
	MaxSendSize int64
	// ChunkMultiple, if set, requires every chunk of an upload session
	// but the last to be a multiple of it. Outlook attachment sessions
	// have no such rule (only order and at most 4 MB per PUT); OneDrive's
	// upload sessions require 327680 (320 KiB), which a client may want
	// to be tested against.
	ChunkMultiple int64
	// UploadSessionLifetime: default 15 minutes.
	UploadSessionLifetime time.Duration
	// KeepBytes: sent messages up to this size keep their MIME form in
	// GraphMessage.MIME. Default 1 MiB.
	KeepBytes int64
}

// GraphError is an error answer of the simulated Graph, and a failure to
// inject with FailNext.
type GraphError struct {
	Status     int    // HTTP status
	Code       string // error.code, e.g. "ErrorSendAsDenied"
	Message    string // error.message
	RetryAfter time.Duration
}

func (e *GraphError) Error() string { return e.Code + ": " + e.Message }

// Graph is a simulated Microsoft Graph mail API (graph.microsoft.com/v1.0
// and the outlook.office.com upload URLs of attachment sessions) over
// HTTPS on 127.0.0.1, trusting tokens of an Entra.
type Graph struct {
	e       *Entra
	opts    GraphOptions
	cert    *Cert
	ln      net.Listener
	srv     *http.Server
	url     string
	closing chan struct{} // closed by Close; releases held requests

	mu        sync.Mutex
	closed    bool
	changed   chan struct{}            // closed and replaced on every change below
	mailboxes map[string]*graphMailbox // by lower-case address
	extra     map[string]bool          // AddMailbox's
	policies  map[string][]string      // application access policies by client ID
	noREST    map[string]bool
	active    map[string]int // in-flight requests by app+mailbox
	mbActive  map[string]int // by mailbox
	peak      map[string]int // by mailbox
	window    map[string][]time.Time
	requests  map[GraphEndpoint]int64
	inject    []graphInjection
	holds     []*graphHold
	held      int
	drops     int
	sent      []GraphMessage
	sessions  map[string]*uploadSession

	errMu   sync.Mutex // not mu: handlers fail while holding mu
	lastErr *GraphError
}

type graphInjection struct {
	ep GraphEndpoint
	f  GraphError
}

type graphHold struct {
	ep      GraphEndpoint
	release chan struct{}
}

// NewGraph starts a simulated Graph on 127.0.0.1 that trusts tokens of e.
func NewGraph(e *Entra, opts GraphOptions) (*Graph, error) {
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = DefaultGraphMaxConcurrent
	}
	if opts.RequestsPerWindow <= 0 {
		opts.RequestsPerWindow = DefaultGraphRequestsPerWindow
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = time.Second
	}
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = DefaultGraphMaxRequestBytes
	}
	if opts.MaxSendSize <= 0 {
		opts.MaxSendSize = DefaultGraphMaxSendSize
	}
	if opts.UploadSessionLifetime <= 0 {
		opts.UploadSessionLifetime = DefaultGraphUploadSessionLifetime
	}
	if opts.KeepBytes <= 0 {
		opts.KeepBytes = 1 << 20
	}
	cert, err := NewCert("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &Graph{
		e:         e,
		opts:      opts,
		cert:      cert,
		ln:        ln,
		url:       "https://" + ln.Addr().String(),
		closing:   make(chan struct{}),
		changed:   make(chan struct{}),
		mailboxes: make(map[string]*graphMailbox),
		extra:     make(map[string]bool),
		policies:  make(map[string][]string),
		noREST:    make(map[string]bool),
		active:    make(map[string]int),
		mbActive:  make(map[string]int),
		peak:      make(map[string]int),
		window:    make(map[string][]time.Time),
		requests:  make(map[GraphEndpoint]int64),
		sessions:  make(map[string]*uploadSession),
	}
	g.srv = &http.Server{
		Handler:           http.HandlerFunc(g.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert.TLS},
			MinVersion:   tls.VersionTLS12,
		},
		ErrorLog: log.New(log.Writer(), "m365sim graph: ", log.LstdFlags),
	}
	go g.srv.ServeTLS(ln, "", "")
	return g, nil
}

// URL is the service root, like "https://graph.microsoft.com": requests go
// to URL()+"/v1.0/users/{id}/…". Upload URLs point to the same server.
func (g *Graph) URL() string { return g.url }

// CACertPEM is the certificate to trust.
func (g *Graph) CACertPEM() []byte { return g.cert.CertPEM }

// Close stops the server; held requests end without a response.
func (g *Graph) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	close(g.closing)
	g.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.srv.Shutdown(ctx); err != nil {
		return g.srv.Close()
	}
	return nil
}

// AddMailbox makes an address a mailbox Graph knows besides the tenants'
// users and the IMAP simulator's mailboxes, e.g. a shared mailbox.
func (g *Graph) AddMailbox(mailbox string) {
	g.mu.Lock()
	g.extra[strings.ToLower(mailbox)] = true
	g.mu.Unlock()
}

// SetAccessPolicy is New-ApplicationAccessPolicy -AccessRight
// RestrictAccess for an app: its app-only tokens may act on these
// mailboxes only, others get 403 ErrorAccessDenied. Without a policy set
// here, an app is restricted to its App.Mailboxes, as if the admin had
// scoped it to the mailboxes it has FullAccess to.
func (g *Graph) SetAccessPolicy(clientID string, mailboxes ...string) {
	lower := make([]string, len(mailboxes))
	for i, m := range mailboxes {
		lower[i] = strings.ToLower(m)
	}
	g.mu.Lock()
	g.policies[strings.ToLower(clientID)] = lower
	g.mu.Unlock()
}

// DisableREST makes Graph refuse a mailbox with 404
// MailboxNotEnabledForRESTAPI, as for a mailbox without an Exchange
// Online licence, inactive or hosted on-premises.
func (g *Graph) DisableREST(mailbox string) {
	g.mu.Lock()
	g.noREST[strings.ToLower(mailbox)] = true
	g.mu.Unlock()
}

// FailNext makes the next request to ep (any endpoint for
// GraphAnyEndpoint) fail with f, after its token was checked. Calls queue
// up. A zero Code and Message are Graph's for the status (429, 503, 504
// and others); RetryAfter > 0 sends Retry-After in whole seconds.
func (g *Graph) FailNext(ep GraphEndpoint, f GraphError) {
	if f.Status == 0 {
		f.Status = http.StatusServiceUnavailable
	}
	if f.Code == "" {
		d := defaultGraphFailure(f.Status)
		f.Code, f.Message = d.Code, cmpOr(f.Message, d.Message)
	}
	g.mu.Lock()
	g.inject = append(g.inject, graphInjection{ep, f})
	g.mu.Unlock()
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func defaultGraphFailure(status int) GraphError {
	switch status {
	case http.StatusTooManyRequests:
		return *errGraphConcurrency(0)
	case http.StatusServiceUnavailable:
		return GraphError{Status: status, Code: "serviceNotAvailable", Message: "The service is temporarily unavailable for maintenance or is overloaded. You may repeat the request after a delay, which may be specified in a Retry-After header."}
	case http.StatusGatewayTimeout:
		return GraphError{Status: status, Code: "gatewayTimeout", Message: "The server, while acting as a proxy, did not receive a timely response from the upstream server it needed to access in attempting to complete the request."}
	case http.StatusInternalServerError:
		return GraphError{Status: status, Code: "generalException", Message: "An unspecified error has occurred."}
	}
	return GraphError{Status: status, Code: "UnknownError", Message: ""}
}

// Hold makes requests to ep (all, for GraphAnyEndpoint) wait, after their
// token was checked and while they count as concurrent, until release is
// called or the server closes. A held request proceeds even when its
// client has gone: a held send still sends.
func (g *Graph) Hold(ep GraphEndpoint) (release func()) {
	h := &graphHold{ep: ep, release: make(chan struct{})}
	g.mu.Lock()
	g.holds = append(g.holds, h)
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.holds = slices.DeleteFunc(g.holds, func(x *graphHold) bool { return x == h })
			g.mu.Unlock()
			close(h.release)
		})
	}
}

// WaitHeld waits until exactly n requests are held.
func (g *Graph) WaitHeld(ctx context.Context, n int) error {
	return waitUntil(ctx, &g.mu, &g.changed, func() bool { return g.held == n })
}

// DropAfterAccept makes the next n sends (sendMail or send) be accepted,
// recorded and delivered, and then their connection closed without a
// response (for HTTP/2, the stream reset): the client cannot know that the
// message went.
func (g *Graph) DropAfterAccept(n int) {
	g.mu.Lock()
	g.drops += n
	g.mu.Unlock()
}

// Requests counts requests to ep, answered or not; GraphAnyEndpoint counts
// all.
func (g *Graph) Requests(ep GraphEndpoint) int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ep == GraphAnyEndpoint {
		var n int64
		for _, c := range g.requests {
			n += c
		}
		return n
	}
	return g.requests[ep]
}

// MaxConcurrent is the most requests on mailbox that were ever in flight
// at once (admitted ones, those refused with 429 not included).
func (g *Graph) MaxConcurrent(mailbox string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.peak[strings.ToLower(mailbox)]
}

// InFlight is the number of admitted requests on mailbox now.
func (g *Graph) InFlight(mailbox string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mbActive[strings.ToLower(mailbox)]
}

// LastError is the latest error answer, or nil.
func (g *Graph) LastError() *GraphError {
	g.errMu.Lock()
	defer g.errMu.Unlock()
	if g.lastErr == nil {
		return nil
	}
	e := *g.lastErr
	return &e
}

// Sent are the messages sent, in order.
func (g *Graph) Sent() []GraphMessage {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.sent)
}

// WaitSent waits until at least n messages were sent and returns them.
func (g *Graph) WaitSent(ctx context.Context, n int) ([]GraphMessage, error) {
	return waitLen(ctx, &g.mu, &g.changed, &g.sent, n)
}

// Drafts is the number of messages in the Drafts folder of mailbox.
func (g *Graph) Drafts(mailbox string) int {
	return g.countFolder(mailbox, folderDrafts)
}

// SentItems is the number of messages in the Sent Items folder of
// mailbox.
func (g *Graph) SentItems(mailbox string) int {
	return g.countFolder(mailbox, folderSentItems)
}

func (g *Graph) countFolder(mailbox, folder string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	mb := g.mailboxes[strings.ToLower(mailbox)]
	if mb == nil {
		return 0
	}
	n := 0
	for _, it := range mb.items {
		if it.folder == folder {
			n++
		}
	}
	return n
}

// UploadSessions is the number of upload sessions open (created, not
// completed, deleted or expired).
func (g *Graph) UploadSessions() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.sessions)
}

func (g *Graph) broadcastLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// takeInjection pops the first failure queued for ep.
func (g *Graph) takeInjection(ep GraphEndpoint) *GraphError {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, in := range g.inject {
		if in.ep == GraphAnyEndpoint || in.ep == ep {
			g.inject = slices.Delete(g.inject, i, i+1)
			f := in.f
			return &f
		}
	}
	return nil
}

// admit counts a request of app on mailbox against the limits: the
// concurrency limit and the request rate, both per app and mailbox.
// release must be called when it is done.
func (g *Graph) admit(appID, mailbox string) (release func(), fail *GraphError) {
	key := appID + "|" + mailbox
	now := g.e.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.active[key] >= g.opts.MaxConcurrent {
		return nil, errGraphConcurrency(g.opts.RetryAfter)
	}
	w := g.window[key]
	cut := 0
	for cut < len(w) && now.Sub(w[cut]) >= GraphRequestWindow {
		cut++
	}
	w = w[cut:]
	if len(w) >= g.opts.RequestsPerWindow {
		g.window[key] = w
		retry := GraphRequestWindow - now.Sub(w[0])
		return nil, errGraphRateLimit(max(retry, time.Second))
	}
	g.window[key] = append(w, now)
	g.active[key]++
	g.mbActive[mailbox]++
	g.peak[mailbox] = max(g.peak[mailbox], g.mbActive[mailbox])
	g.broadcastLocked()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.active[key]--
			if g.active[key] == 0 {
				delete(g.active, key)
			}
			g.mbActive[mailbox]--
			if g.mbActive[mailbox] == 0 {
				delete(g.mbActive, mailbox)
			}
			g.broadcastLocked()
			g.mu.Unlock()
		})
	}, nil
}

// wait blocks while a hold for ep is in place; false if the server
// closed meanwhile.
func (g *Graph) wait(ep GraphEndpoint) bool {
	g.mu.Lock()
	var h *graphHold
	for _, x := range g.holds {
		if x.ep == GraphAnyEndpoint || x.ep == ep {
			h = x
			break
		}
	}
	if h == nil {
		g.mu.Unlock()
		return true
	}
	g.held++
	g.broadcastLocked()
	g.mu.Unlock()
	ok := true
	select {
	case <-h.release:
	case <-g.closing:
		ok = false
	}
	g.mu.Lock()
	g.held--
	g.broadcastLocked()
	g.mu.Unlock()
	return ok
}

// takeDrop consumes one DropAfterAccept.
func (g *Graph) takeDrop() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.drops == 0 {
		return false
	}
	g.drops--
	return true
}

// dropConnection closes the connection of a request without a response:
// the TCP connection under HTTP/1.1 (no close_notify under TLS), the
// stream under HTTP/2.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			if tc, ok := conn.(*tls.Conn); ok {
				tc.NetConn().Close()
			} else {
				conn.Close()
			}
			panic(http.ErrAbortHandler)
		}
	}
	panic(http.ErrAbortHandler)
}
