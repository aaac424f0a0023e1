package smtp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
)

// maxRelayText bounds the text of a reply relayed from upstream.
const maxRelayText = 512

// Replies of the local side. RFC 4954 §6 for AUTH, RFC 3463 for the
// enhanced codes.
var (
	errAuthRequired = &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errBadCreds     = &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errTooManyAuth  = &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: "Too many failed authentications, closing connection"}
	errNoUpstream   = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "Upstream connection lost, message not accepted; try again later"}
	errUpstreamWait = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 4, 1}, Message: "Upstream server did not answer in time, message not accepted; try again later"}
	errClientAbort  = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Message transfer interrupted, not accepted"}
	errLongLine     = &gosmtp.SMTPError{Code: 554, EnhancedCode: gosmtp.EnhancedCode{5, 6, 0}, Message: "Message has a line longer than 65536 octets, not accepted"}
	errTimeout      = &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "Timeout, closing connection"}
)

// client is one client connection. It outlives the sessions go-smtp
// starts anew after STARTTLS.
type client struct {
	srv  *Server
	tc   *proxy.Conn
	conn *clientConn
	log  *slog.Logger
	// loopback: the client may use UnauthenticatedAs.
	loopback bool

	// Touched only by the connection's goroutine (go-smtp's), except
	// through a session's mutex.
	failures int
	account  string
	messages int
	bytes    int64
}

func (cl *client) newSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	if c.Conn() != net.Conn(cl.conn) {
		// STARTTLS: go-smtp reads through TLS, and cl.conn sees only
		// records.
		cl.conn.lines.Store(false)
	}
	return &session{cl: cl, log: cl.log, maxBytes: c.Server().MaxMessageBytes}, nil
}

// session relays one go-smtp session command by command. go-smtp calls
// it from the connection's goroutine, except Data during BDAT, which runs
// in its own goroutine while RSET or the end of the connection may come:
// mu guards what they share.
type session struct {
	cl  *client
	log *slog.Logger
	// maxBytes is the message size limit go-smtp advertises.
	maxBytes int64

	mu sync.Mutex
	// authorize returns upstream credentials again, to reconnect after
	// upstream dropped an idle connection. Nil before AUTH.
	authorize func(context.Context) (*proxy.Upstream, error)
	account   string
	up        Upstream     // nil when not connected
	tx        *transaction // the open transaction, if any
	inData    bool
	ended     bool
}

// transaction is a mail transaction in progress.
type transaction struct {
	from  string
	rcpts []string
	start time.Time
}

var _ gosmtp.AuthSession = (*session)(nil)

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.cl.conn.expired() {
		return nil, errTimeout
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return &saslServer{proxy.NewPlainServer(s.login), sasl.Plain, s.log}, nil
	case sasl.Login:
		return &saslServer{proxy.NewLoginServer(s.login), sasl.Login, s.log}, nil
	}
	return nil, gosmtp.ErrAuthUnknownMechanism
}

// login checks the credentials and logs in upstream, so that a client
// learns at AUTH, not at its first message, that it cannot send.
func (s *session) login(username, password string) error {
	srv := s.cl.srv
	ctx, cancel := context.WithTimeout(srv.Srv.Context(), srv.Limits.LoginTimeout)
	defer cancel()
	l := &proxy.Login{Protocol: proxy.SMTP, Username: username, Password: password, Remote: s.cl.tc.NetConn().RemoteAddr()}
	authorize := func(ctx context.Context) (*proxy.Upstream, error) { return srv.opts.Auth.Authenticate(ctx, l) }
	if err := s.connect(ctx, authorize, username); err != nil {
		var le *proxy.LoginError
		if !errors.As(err, &le) {
			return err
		}
		return s.authFailed(le)
	}
	return nil
}

func (s *session) authFailed(le *proxy.LoginError) error {
	s.cl.failures++
	if s.cl.failures >= s.cl.srv.Limits.MaxLoginFailures {
		s.cl.conn.hungUp.Store(true)
		return errTooManyAuth
	}
	switch le.Kind {
	case proxy.KindCredentials:
		return errBadCreds
	case proxy.KindAccount:
		return &gosmtp.SMTPError{Code: 454, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0},
			Message: proxy.ReplyText(le.Reason, reasonRefused)}
	}
	return &gosmtp.SMTPError{Code: 454, EnhancedCode: unavailableCode(le), Message: proxy.ReplyText(le.Reason, reasonUnavailable)}
}

// unavailableCode is the enhanced code of a temporary login failure:
// upstream's own when it refused for a while (432 4.3.2, its connection
// limit), 4.3.2 when no connection slot came free.
func unavailableCode(le *proxy.LoginError) gosmtp.EnhancedCode {
	var rej *rejection
	switch {
	case errors.Is(le.Err, proxy.ErrSlotWait):
		return gosmtp.EnhancedCode{4, 3, 2}
	case errors.As(le.Err, &rej) && rej.reply.Code/100 == 4 && rej.reply.EnhancedCode[0] == 4:
		return rej.reply.EnhancedCode
	}
	return gosmtp.EnhancedCode{4, 7, 0}
}

// connect asks authorize for credentials and logs in upstream. Its errors
// are *LoginError, or an SMTP reply if the session ended meanwhile.
func (s *session) connect(ctx context.Context, authorize func(context.Context) (*proxy.Upstream, error), user string) error {
	login := func(ctx context.Context, up *proxy.Upstream) (Upstream, error) {
		return s.cl.srv.loginUpstream(ctx, s.cl.tc, up)
	}
	u, up, le := proxy.LoginUpstream(ctx, s.cl.srv.Pipeline, s.log, user, authorize, login)
	if le != nil {
		return le
	}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		u.Close()
		return errNoUpstream
	}
	s.authorize, s.account, s.up = authorize, up.Account, u
	s.mu.Unlock()
	s.cl.account = up.Account
	s.cl.conn.endPreAuth()
	return nil
}

// classifyFailure classifies a failed upstream login for the login
// pipeline: upstream's refusal of AUTH, explained if known, or a connection
// that could not carry a token.
func classifyFailure(err error) (le *proxy.LoginError, advice string, refusal error) {
	le = loginError(err)
	var rej *rejection
	switch {
	case errors.As(err, &rej):
		if e, ok := explain(rej.reply); ok {
			advice = e.advice
		}
		return le, advice, rej
	case errors.Is(err, errNoSTARTTLS):
		advice = "check [smtp] upstream: it must offer STARTTLS, or use port 465 for TLS from the first byte"
	}
	return le, advice, nil
}

// upstream returns the session's upstream connection, connecting anew if
// it has none; fresh tells which.
func (s *session) upstream() (u Upstream, fresh bool, err error) {
	s.mu.Lock()
	u, authorize, account := s.up, s.authorize, s.account
	s.mu.Unlock()
	if u != nil {
		return u, false, nil
	}
	if authorize == nil {
		if !s.cl.mayOmitAuth() {
			return nil, false, errAuthRequired
		}
		account = s.cl.srv.opts.UnauthenticatedAs
		aa := s.cl.srv.opts.Auth.(proxy.AccountAuthenticator)
		authorize = func(ctx context.Context) (*proxy.Upstream, error) {
			return aa.AuthenticateAccount(ctx, proxy.SMTP, account)
		}
	}
	ctx, cancel := context.WithTimeout(s.cl.srv.Srv.Context(), s.cl.srv.Limits.LoginTimeout)
	defer cancel()
	if err := s.connect(ctx, authorize, account); err != nil {
		var le *proxy.LoginError
		if errors.As(err, &le) {
			return nil, false, mailLoginReply(le)
		}
		return nil, false, err
	}
	s.mu.Lock()
	u = s.up
	s.mu.Unlock()
	if u == nil {
		return nil, false, errNoUpstream
	}
	return u, true, nil
}

// mailLoginReply answers MAIL when logging in upstream failed then. Only
// wrong credentials are final; an account waiting for its administrator
// keeps its mail at the client, which retries.
func mailLoginReply(le *proxy.LoginError) *gosmtp.SMTPError {
	switch le.Kind {
	case proxy.KindCredentials:
		return errAuthRequired
	case proxy.KindAccount:
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: proxy.ReplyText(le.Reason, reasonRefused)}
	}
	return &gosmtp.SMTPError{Code: 451, EnhancedCode: unavailableCode(le), Message: proxy.ReplyText(le.Reason, reasonUnavailable)}
}

// mayOmitAuth: UnauthenticatedAs is set and the client is on loopback.
func (cl *client) mayOmitAuth() bool {
	return cl.srv.opts.UnauthenticatedAs != "" && cl.loopback
}

func (s *session) Mail(from string, opts *gosmtp.MailOptions) (err error) {
	if s.cl.conn.expired() {
		return errTimeout
	}
	if s.cl.mayOmitAuth() {
		// Authorized by where it comes from: its pre-auth phase is over.
		s.cl.conn.endPreAuth()
	}
	s.cl.conn.setBusy(true)
	defer func() {
		if err != nil {
			s.cl.conn.setBusy(false)
		}
	}()
	u, fresh, err := s.upstream()
	if err != nil {
		return err
	}
	err = u.Mail(from, opts)
	if err != nil && !fresh && connectionLost(err) {
		// Upstream closes idle connections; MAIL has no effect yet, so
		// it is safe to say it again on a new one.
		s.log.Debug("upstream connection lost between messages; reconnecting", "err", err)
		s.drop(u)
		if u, _, err = s.upstream(); err != nil {
			return err
		}
		err = u.Mail(from, opts)
	}
	if err != nil {
		return s.relayError(u, "MAIL", err)
	}
	s.mu.Lock()
	s.tx = &transaction{from: from, start: time.Now()}
	s.mu.Unlock()
	return nil
}

func (s *session) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	if s.cl.conn.expired() {
		return errTimeout
	}
	s.mu.Lock()
	u, tx := s.up, s.tx
	s.mu.Unlock()
	if u == nil || tx == nil {
		return errNoUpstream
	}
	if err := u.Rcpt(to, opts); err != nil {
		s.log.Info("recipient refused", "account", s.account, "rcpt", to, "err", err.Error())
		return s.relayError(u, "RCPT", err)
	}
	s.mu.Lock()
	tx.rcpts = append(tx.rcpts, to)
	s.mu.Unlock()
	return nil
}

// Data streams the message upstream and answers with upstream's own final
// reply: nothing is acknowledged that upstream did not accept.
func (s *session) Data(r io.Reader) (err error) {
	if s.cl.conn.expired() {
		return errTimeout
	}
	// The message's lines come at the client's pace: each read has its
	// own deadline, not the command's.
	s.cl.conn.inData.Store(true)
	defer s.cl.conn.inData.Store(false)
	s.mu.Lock()
	u, tx := s.up, s.tx
	s.inData = true
	s.mu.Unlock()
	// Once upstream said go-ahead, the transaction ends with the message
	// whatever happens; a refused DATA leaves it open upstream, for the
	// Reset go-smtp calls next to end with RSET.
	started := false
	defer func() {
		s.mu.Lock()
		s.inData = false
		if started {
			s.tx = nil
		}
		s.mu.Unlock()
	}()
	if u == nil || tx == nil {
		return errNoUpstream
	}
	defer func() { s.cl.srv.Srv.Observer().MessageRelayed(messageOutcome(err)) }()
	w, err := u.Data()
	if err != nil {
		return s.relayError(u, "DATA", err)
	}
	started = true
	n, rerr, werr := s.readMessage(w, r)
	s.cl.srv.Srv.Observer().BytesRelayed(proxy.SMTP, proxy.Up, n)
	attrs := []any{"account", s.account, "from", tx.from, "rcpts", len(tx.rcpts), "bytes", n}
	switch {
	case rerr != nil:
		// Leaving DATA unfinished is the only way to abort it: upstream
		// drops a message whose final dot never came.
		s.drop(u)
		s.log.Info("message not relayed: client transfer failed", append(attrs, "err", rerr.Error())...)
		var se *gosmtp.SMTPError
		if errors.As(rerr, &se) {
			return se
		}
		if errors.Is(rerr, gosmtp.ErrTooLongLine) {
			return errLongLine
		}
		return errClientAbort
	case werr != nil:
		s.drop(u)
		s.log.Warn("message not relayed: upstream failed during DATA", append(attrs, "err", werr.Error())...)
		return lostReply(werr)
	}
	reply, err := w.Close()
	if la, ok := w.(interface{ LogAttrs() []any }); ok {
		// The upstream's own part of the line: a Graph upstream's
		// request-id and the administrator's fix.
		attrs = append(attrs, la.LogAttrs()...)
	}
	if err != nil {
		s.log.Warn("message not relayed", append(attrs, "err", err.Error())...)
		return s.relayError(u, "DATA", err)
	}
	s.cl.messages++
	s.cl.bytes += n
	s.log.Info("message relayed", append(attrs, "queue_id", queueID(reply), "reply", reply,
		"duration", time.Since(tx.start).Round(time.Millisecond))...)
	s.log.Debug("message recipients", "rcpt", tx.rcpts)
	return acceptedReply(reply)
}

// Reset ends a transaction; go-smtp calls it after RSET, a new EHLO and
// every DATA reply.
func (s *session) Reset() {
	s.mu.Lock()
	u, tx, inData := s.up, s.tx, s.inData
	s.tx = nil
	s.mu.Unlock()
	// During BDAT, Data notices the reset on its reader and aborts itself.
	if u != nil && tx != nil && !inData {
		if err := u.Reset(); err != nil {
			s.log.Debug("upstream RSET failed; dropping the connection", "err", err)
			s.drop(u)
		}
	}
	s.cl.conn.setBusy(false)
}

// Logout ends the session: at the end of the connection or at STARTTLS.
// A relay connection not cut off in DATA goes to the server's pool, for
// the next session of its mailbox.
func (s *session) Logout() error {
	s.mu.Lock()
	u, inData := s.up, s.inData
	s.up, s.ended = nil, true
	s.mu.Unlock()
	if u != nil {
		k, reusable := u.(*kept)
		switch {
		case inData:
			u.Close()
		case reusable:
			k.pool.put(k, s.cl.tc)
		default:
			u.Quit()
		}
	}
	s.cl.conn.setBusy(false)
	return nil
}

// drop forgets u and closes it, freeing its slot.
func (s *session) drop(u Upstream) {
	s.mu.Lock()
	if s.up == u {
		s.up = nil
	}
	s.mu.Unlock()
	u.Close()
}

// relayError passes upstream's refusal to the client unchanged; a failed
// connection becomes a 4xx, so that the client keeps the message.
func (s *session) relayError(u Upstream, cmd string, err error) error {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) && se.Code >= 400 && se.Code < 600 {
		if se.Code == 421 {
			// Upstream is closing the connection; so does the session,
			// with upstream's reason.
			s.drop(u)
			s.cl.conn.hungUp.Store(true)
		}
		return &gosmtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: relayText(se.Message)}
	}
	s.drop(u)
	s.log.Warn("upstream failed", "account", s.account, "command", cmd, "err", err.Error())
	return lostReply(err)
}

// messageOutcome is the outcome of a DATA that Data answered with err:
// upstream's 250 relayed, a 5xx rejected, anything else a temporary
// failure.
func messageOutcome(err error) string {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		switch se.Code / 100 {
		case 2:
			return proxy.MessageRelayed
		case 5:
			return proxy.MessageRejected
		}
	}
	return proxy.MessageFailedTemporary
}

func lostReply(err error) *gosmtp.SMTPError {
	if proxy.IsTimeout(err) {
		return errUpstreamWait
	}
	return errNoUpstream
}

// connectionLost: err says the connection is gone rather than refusing the
// command.
func connectionLost(err error) bool {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return se.Code == 421
	}
	return true
}

// acceptedReply relays upstream's 250 to the end of DATA with its text,
// which carries upstream's queue id. go-smtp sends a returned SMTPError's
// code as is, 250 included.
func acceptedReply(status string) *gosmtp.SMTPError {
	reply := &gosmtp.SMTPError{Code: 250, EnhancedCode: gosmtp.EnhancedCode{2, 0, 0}, Message: "OK"}
	code, text, _ := strings.Cut(status, " ")
	if ec, ok := parseEnhanced(code); ok && ec[0] == 2 {
		reply.EnhancedCode, status = ec, text
	}
	if t := relayText(status); t != "" {
		reply.Message = t
	}
	return reply
}

// queueID finds the id upstream gave the message in its final reply:
// Exchange's "2.0.0 OK <id@host> [Hostname=...]", Postfix's "2.0.0 Ok:
// queued as ID". It returns "" for other replies.
func queueID(reply string) string {
	if _, id, ok := strings.Cut(reply, "queued as "); ok {
		id, _, _ = strings.Cut(id, " ")
		return id
	}
	if _, rest, ok := strings.Cut(reply, "<"); ok {
		if id, _, ok := strings.Cut(rest, ">"); ok {
			return id
		}
	}
	return ""
}

func parseEnhanced(s string) (gosmtp.EnhancedCode, bool) {
	var ec gosmtp.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return ec, false
	}
	for i, p := range parts {
		if p == "" || len(p) > 3 {
			return ec, false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return ec, false
			}
			ec[i] = ec[i]*10 + int(c-'0')
		}
	}
	return ec, true
}

// relayText keeps upstream's reply lines printable and bounded.
func relayText(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = proxy.ReplyText(l, "")
	}
	s = strings.Join(lines, "\n")
	if len(s) > maxRelayText {
		s = s[:maxRelayText]
	}
	return strings.TrimSpace(s)
}

// copyBuffer is the size of the buffer a message is streamed through.
const copyBuffer = 32 << 10

// scanBuffers hold the client's message data as it is scanned.
var scanBuffers = sync.Pool{New: func() any { return new([copyBuffer]byte) }}

// readMessage streams the message to w: read from the client connection
// as it came, when the client speaks in clear (or TLS from the first
// byte) and upstream takes the message as it goes on the wire; else
// through go-smtp's reader r. rerr is the client's failure, werr
// upstream's.
func (s *session) readMessage(w MessageWriter, r io.Reader) (n int64, rerr, werr error) {
	c := s.cl.conn
	ww, ok := w.(wireWriter)
	// After 354, go-smtp's reader holds nothing yet (see clientConn); BDAT
	// chunks come from go-smtp.
	if !ok || !c.lines.Load() || !c.goAhead.Load() {
		return copyMessage(w, r)
	}
	sc := newWireScanner(wireWriterFunc(ww.WriteWire), s.maxBytes, maxLineLength)
	buf := scanBuffers.Get().(*[copyBuffer]byte)
	defer scanBuffers.Put(buf)
	rest, rerr := scanData(sc, buf[:], c.readData)
	switch {
	case sc.tooLong:
		// What follows cannot be told from commands: go-smtp reads no
		// more, says so and closes, as when its own reader finds one.
		c.readErr = gosmtp.ErrTooLongLine
		return sc.size, gosmtp.ErrTooLongLine, nil
	case rerr == io.EOF:
		return sc.size, io.ErrUnexpectedEOF, nil
	case rerr != nil:
		return sc.size, rerr, nil
	}
	// go-smtp's reader reads the end of an empty message, then the
	// commands that followed.
	c.unread(append(endOfData[:len(endOfData):len(endOfData)], rest...))
	switch {
	case sc.tooLarge:
		return sc.size, gosmtp.ErrDataTooLarge, nil
	case sc.werr != nil:
		return sc.size, nil, sc.werr
	}
	return sc.size, nil, nil
}

type wireWriterFunc func([]byte) (int, error)

func (f wireWriterFunc) Write(p []byte) (int, error) { return f(p) }

// copyMessage streams r to w. rerr is the client's failure, werr
// upstream's.
func copyMessage(w io.Writer, r io.Reader) (n int64, rerr, werr error) {
	buf := make([]byte, copyBuffer)
	for {
		nr, err := r.Read(buf)
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, nil, werr
			}
		}
		if err == io.EOF {
			return n, nil, nil
		}
		if err != nil {
			return n, err, nil
		}
	}
}
