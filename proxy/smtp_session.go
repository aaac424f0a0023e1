package proxy

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
	"github.com/emersion/go-smtp"
)

// smtpMaxReplyText bounds the text of a reply relayed from upstream.
const smtpMaxReplyText = 512

// Replies of the local side. RFC 4954 §6 for AUTH, RFC 3463 for the
// enhanced codes.
var (
	errSMTPAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errSMTPBadCreds     = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errSMTPTooManyAuth  = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many failed authentications, closing connection"}
	errSMTPNoUpstream   = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Upstream connection lost, message not accepted; try again later"}
	errSMTPUpstreamWait = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1}, Message: "Upstream server did not answer in time, message not accepted; try again later"}
	errSMTPClientAbort  = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Message transfer interrupted, not accepted"}
	errSMTPLongLine     = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message has a line longer than 65536 octets, not accepted"}
	errSMTPTimeout      = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timeout, closing connection"}
)

// smtpClient is one client connection. It outlives the sessions go-smtp
// starts anew after STARTTLS.
type smtpClient struct {
	srv  *SMTPServer
	tc   *Conn
	conn *smtpConn
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

func (cl *smtpClient) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &smtpSession{cl: cl, log: cl.log}, nil
}

// smtpSession relays one go-smtp session command by command. go-smtp calls
// it from the connection's goroutine, except Data during BDAT, which runs
// in its own goroutine while RSET or the end of the connection may come:
// mu guards what they share.
type smtpSession struct {
	cl  *smtpClient
	log *slog.Logger

	mu sync.Mutex
	// authorize returns upstream credentials again, to reconnect after
	// upstream dropped an idle connection. Nil before AUTH.
	authorize func(context.Context) (*Upstream, error)
	account   string
	up        *smtpUpstream // nil when not connected
	tx        *smtpTx       // the open transaction, if any
	inData    bool
	ended     bool
}

// smtpTx is a mail transaction in progress.
type smtpTx struct {
	from  string
	rcpts []string
	start time.Time
}

var _ smtp.AuthSession = (*smtpSession)(nil)

func (s *smtpSession) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	if s.cl.conn.expired() {
		return nil, errSMTPTimeout
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return &smtpSASLServer{NewPlainServer(s.login), sasl.Plain, s.log}, nil
	case sasl.Login:
		return &smtpSASLServer{NewLoginServer(s.login), sasl.Login, s.log}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks the credentials and logs in upstream, so that a client
// learns at AUTH, not at its first message, that it cannot send.
func (s *smtpSession) login(username, password string) error {
	srv := s.cl.srv
	ctx, cancel := context.WithTimeout(srv.srv.Context(), srv.opts.LoginTimeout)
	defer cancel()
	l := &Login{Protocol: SMTP, Username: username, Password: password, Remote: s.cl.tc.NetConn().RemoteAddr()}
	authorize := func(ctx context.Context) (*Upstream, error) { return srv.opts.Auth.Authenticate(ctx, l) }
	if err := s.connect(ctx, authorize, username); err != nil {
		var le *LoginError
		if !errors.As(err, &le) {
			return err
		}
		return s.authFailed(le)
	}
	return nil
}

func (s *smtpSession) authFailed(le *LoginError) error {
	s.cl.failures++
	if s.cl.failures >= s.cl.srv.opts.MaxLoginFailures {
		s.cl.conn.hungUp.Store(true)
		return errSMTPTooManyAuth
	}
	switch le.Kind {
	case KindCredentials:
		return errSMTPBadCreds
	case KindAccount:
		return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: ReplyText(le.Reason, smtpReasonRefused)}
	}
	return &smtp.SMTPError{Code: 454, EnhancedCode: unavailableCode(le), Message: ReplyText(le.Reason, smtpReasonUnavailable)}
}

// unavailableCode is the enhanced code of a temporary login failure:
// upstream's own when it refused for a while (432 4.3.2, its connection
// limit), 4.3.2 when no connection slot came free.
func unavailableCode(le *LoginError) smtp.EnhancedCode {
	var rej *smtpRejection
	switch {
	case errors.Is(le.Err, ErrSlotWait):
		return smtp.EnhancedCode{4, 3, 2}
	case errors.As(le.Err, &rej) && rej.reply.Code/100 == 4 && rej.reply.EnhancedCode[0] == 4:
		return rej.reply.EnhancedCode
	}
	return smtp.EnhancedCode{4, 7, 0}
}

// connect asks authorize for credentials and logs in upstream. Its errors
// are *LoginError, or an SMTP reply if the session ended meanwhile.
func (s *smtpSession) connect(ctx context.Context, authorize func(context.Context) (*Upstream, error), user string) error {
	login := func(ctx context.Context, up *Upstream) (*smtpUpstream, error) {
		return s.cl.srv.loginSMTPUpstream(ctx, s.cl.tc, up)
	}
	u, up, le := LoginUpstream(ctx, s.cl.srv.pipeline, s.log, user, authorize, login)
	if le != nil {
		return le
	}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		u.close()
		return errSMTPNoUpstream
	}
	s.authorize, s.account, s.up = authorize, up.Account, u
	s.mu.Unlock()
	s.cl.account = up.Account
	s.cl.conn.endPreAuth()
	return nil
}

// classifySMTPFailure classifies a failed upstream login for the login
// pipeline: upstream's refusal of AUTH, explained if known, or a connection
// that could not carry a token.
func classifySMTPFailure(err error) (le *LoginError, advice string, refusal error) {
	le = smtpLoginError(err)
	var rej *smtpRejection
	switch {
	case errors.As(err, &rej):
		if e, ok := explainSMTP(rej.reply); ok {
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
func (s *smtpSession) upstream() (u *smtpUpstream, fresh bool, err error) {
	s.mu.Lock()
	u, authorize, account := s.up, s.authorize, s.account
	s.mu.Unlock()
	if u != nil {
		return u, false, nil
	}
	if authorize == nil {
		if !s.cl.mayOmitAuth() {
			return nil, false, errSMTPAuthRequired
		}
		account = s.cl.srv.opts.UnauthenticatedAs
		aa := s.cl.srv.opts.Auth.(AccountAuthenticator)
		authorize = func(ctx context.Context) (*Upstream, error) {
			return aa.AuthenticateAccount(ctx, SMTP, account)
		}
	}
	ctx, cancel := context.WithTimeout(s.cl.srv.srv.Context(), s.cl.srv.opts.LoginTimeout)
	defer cancel()
	if err := s.connect(ctx, authorize, account); err != nil {
		var le *LoginError
		if errors.As(err, &le) {
			return nil, false, mailLoginReply(le)
		}
		return nil, false, err
	}
	s.mu.Lock()
	u = s.up
	s.mu.Unlock()
	if u == nil {
		return nil, false, errSMTPNoUpstream
	}
	return u, true, nil
}

// mailLoginReply answers MAIL when logging in upstream failed then. Only
// wrong credentials are final; an account waiting for its administrator
// keeps its mail at the client, which retries.
func mailLoginReply(le *LoginError) *smtp.SMTPError {
	switch le.Kind {
	case KindCredentials:
		return errSMTPAuthRequired
	case KindAccount:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: ReplyText(le.Reason, smtpReasonRefused)}
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: unavailableCode(le), Message: ReplyText(le.Reason, smtpReasonUnavailable)}
}

// mayOmitAuth: UnauthenticatedAs is set and the client is on loopback.
func (cl *smtpClient) mayOmitAuth() bool {
	return cl.srv.opts.UnauthenticatedAs != "" && cl.loopback
}

func (s *smtpSession) Mail(from string, opts *smtp.MailOptions) (err error) {
	if s.cl.conn.expired() {
		return errSMTPTimeout
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
	err = u.c.Mail(from, opts)
	if err != nil && !fresh && connectionLost(err) {
		// Upstream closes idle connections; MAIL has no effect yet, so
		// it is safe to say it again on a new one.
		s.log.Debug("upstream connection lost between messages; reconnecting", "err", err)
		s.drop(u)
		if u, _, err = s.upstream(); err != nil {
			return err
		}
		err = u.c.Mail(from, opts)
	}
	if err != nil {
		return s.relayError(u, "MAIL", err)
	}
	s.mu.Lock()
	s.tx = &smtpTx{from: from, start: time.Now()}
	s.mu.Unlock()
	return nil
}

func (s *smtpSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.cl.conn.expired() {
		return errSMTPTimeout
	}
	s.mu.Lock()
	u, tx := s.up, s.tx
	s.mu.Unlock()
	if u == nil || tx == nil {
		return errSMTPNoUpstream
	}
	if err := u.c.Rcpt(to, opts); err != nil {
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
func (s *smtpSession) Data(r io.Reader) error {
	if s.cl.conn.expired() {
		return errSMTPTimeout
	}
	// The message's lines come at the client's pace: each read has its
	// own deadline, not the command's.
	s.cl.conn.inData.Store(true)
	defer s.cl.conn.inData.Store(false)
	s.mu.Lock()
	u, tx := s.up, s.tx
	s.inData = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inData, s.tx = false, nil
		s.mu.Unlock()
	}()
	if u == nil || tx == nil {
		return errSMTPNoUpstream
	}
	w, err := u.c.Data()
	if err != nil {
		return s.relayError(u, "DATA", err)
	}
	n, rerr, werr := copyMessage(w, r, u.conn, s.cl.srv.opts.CommandTimeout)
	attrs := []any{"account", s.account, "from", tx.from, "rcpts", len(tx.rcpts), "bytes", n}
	switch {
	case rerr != nil:
		// Leaving DATA unfinished is the only way to abort it: upstream
		// drops a message whose final dot never came.
		s.drop(u)
		s.log.Info("message not relayed: client transfer failed", append(attrs, "err", rerr.Error())...)
		var se *smtp.SMTPError
		if errors.As(rerr, &se) {
			return se
		}
		if errors.Is(rerr, smtp.ErrTooLongLine) {
			return errSMTPLongLine
		}
		return errSMTPClientAbort
	case werr != nil:
		s.drop(u)
		s.log.Warn("message not relayed: upstream failed during DATA", append(attrs, "err", werr.Error())...)
		return lostReply(werr)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		s.log.Warn("message not relayed", append(attrs, "err", err.Error())...)
		return s.relayError(u, "DATA", err)
	}
	s.cl.messages++
	s.cl.bytes += n
	s.log.Info("message relayed", append(attrs, "queue_id", queueID(resp.StatusText), "reply", resp.StatusText,
		"duration", time.Since(tx.start).Round(time.Millisecond))...)
	s.log.Debug("message recipients", "rcpt", tx.rcpts)
	return acceptedReply(resp.StatusText)
}

// Reset ends a transaction; go-smtp calls it after RSET, a new EHLO and
// every DATA reply.
func (s *smtpSession) Reset() {
	s.mu.Lock()
	u, tx, inData := s.up, s.tx, s.inData
	s.tx = nil
	s.mu.Unlock()
	// During BDAT, Data notices the reset on its reader and aborts itself.
	if u != nil && tx != nil && !inData {
		if err := u.c.Reset(); err != nil {
			s.log.Debug("upstream RSET failed; dropping the connection", "err", err)
			s.drop(u)
		}
	}
	s.cl.conn.setBusy(false)
}

// Logout ends the session: at the end of the connection or at STARTTLS.
func (s *smtpSession) Logout() error {
	s.mu.Lock()
	u, inData := s.up, s.inData
	s.up, s.ended = nil, true
	s.mu.Unlock()
	if u != nil {
		if inData {
			u.close()
		} else {
			u.quit()
		}
	}
	s.cl.conn.setBusy(false)
	return nil
}

// drop forgets u and closes it, freeing its slot.
func (s *smtpSession) drop(u *smtpUpstream) {
	s.mu.Lock()
	if s.up == u {
		s.up = nil
	}
	s.mu.Unlock()
	u.close()
}

// relayError passes upstream's refusal to the client unchanged; a failed
// connection becomes a 4xx, so that the client keeps the message.
func (s *smtpSession) relayError(u *smtpUpstream, cmd string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 400 && se.Code < 600 {
		if se.Code == 421 {
			// Upstream is closing the connection; so does the session,
			// with upstream's reason.
			s.drop(u)
			s.cl.conn.hungUp.Store(true)
		}
		return &smtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: relayText(se.Message)}
	}
	s.drop(u)
	s.log.Warn("upstream failed", "account", s.account, "command", cmd, "err", err.Error())
	return lostReply(err)
}

func lostReply(err error) *smtp.SMTPError {
	if IsTimeout(err) {
		return errSMTPUpstreamWait
	}
	return errSMTPNoUpstream
}

// connectionLost: err says the connection is gone rather than refusing the
// command.
func connectionLost(err error) bool {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code == 421
	}
	return true
}

// acceptedReply relays upstream's 250 to the end of DATA with its text,
// which carries upstream's queue id. go-smtp sends a returned SMTPError's
// code as is, 250 included.
func acceptedReply(status string) *smtp.SMTPError {
	reply := &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK"}
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

func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	var ec smtp.EnhancedCode
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
		lines[i] = ReplyText(l, "")
	}
	s = strings.Join(lines, "\n")
	if len(s) > smtpMaxReplyText {
		s = s[:smtpMaxReplyText]
	}
	return strings.TrimSpace(s)
}

// smtpCopyBuffer is the size of the buffer a message is streamed through.
const smtpCopyBuffer = 32 << 10

// copyMessage streams r to w, giving each write to upstream its own
// deadline. rerr is the client's failure, werr upstream's.
func copyMessage(w io.Writer, r io.Reader, upstream net.Conn, timeout time.Duration) (n int64, rerr, werr error) {
	buf := make([]byte, smtpCopyBuffer)
	for {
		nr, err := r.Read(buf)
		if nr > 0 {
			upstream.SetWriteDeadline(time.Now().Add(timeout))
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
