package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/mailbroker/broker/proxy"
)

const (
	// maxBadCommands is how many invalid or refused commands a client
	// may send before login; a client that keeps sending garbage is not
	// going to log in.
	maxBadCommands = 10
)

// authenticatedCommands are refused before login with "Log in first"
// rather than as unknown.
var authenticatedCommands = map[string]bool{
	"SELECT": true, "EXAMINE": true, "CREATE": true, "DELETE": true, "RENAME": true,
	"SUBSCRIBE": true, "UNSUBSCRIBE": true, "LIST": true, "LSUB": true, "STATUS": true,
	"APPEND": true, "CHECK": true, "CLOSE": true, "EXPUNGE": true, "SEARCH": true,
	"FETCH": true, "STORE": true, "COPY": true, "MOVE": true, "UID": true, "IDLE": true,
	"NAMESPACE": true, "UNSELECT": true, "GETQUOTA": true,
	"GETQUOTAROOT": true, "GETACL": true, "MYRIGHTS": true, "COMPRESS": true,
}

// session is one client connection: the pre-login dialogue handled
// here, then the splice to upstream.
type session struct {
	srv   *Server
	tc    *proxy.Conn
	conn  net.Conn // the client connection, a *tls.Conn once TLS is on
	isTLS bool
	r     *commandReader // nil once spliced
	log   *slog.Logger

	failures int // failed logins
	bad      int // invalid or refused commands

	// deadline ends the pre-login phase: every read before login, however
	// slow the client trickles its bytes, stops there.
	deadline time.Time
	// release frees the session's upstream slot of its mailbox; nil
	// while it holds none.
	release func()

	// linger is set when the session ends on the client's error while the
	// client may still be sending.
	linger bool

	// spliced is set, under drainMu, when the splice takes the client over.
	drainMu sync.Mutex
	spliced bool

	// loggedIn is upstream once the client's login succeeded and was
	// answered: the session ends its pre-login loop and splices.
	loggedIn *upstreamSession

	account string
	stats   proxy.SpliceStats
	reason  string // why the session ended
}

func newSession(srv *Server, tc *proxy.Conn) *session {
	s := &session{srv: srv, tc: tc, conn: tc.NetConn(), log: srv.Logger.With("session", tc.ID()),
		deadline: tc.Accepted().Add(srv.Limits.PreAuthTimeout)}
	_, s.isTLS = tc.NetConn().(*tls.Conn)
	s.r = newCommandReader(s.conn, s.continueLiteral)
	return s
}

func (s *session) run() {
	defer s.logEnd()
	defer func() {
		if s.release != nil {
			s.release()
		}
	}()
	defer func() {
		if s.linger {
			proxy.CloseAfterFinalReply(s.conn)
		}
	}()
	// Everything before the splice runs on a goroutine of its own: its
	// deep stack (TLS handshakes, the login, logging) ends with it, and the
	// session's goroutine relays with a small one.
	var u *upstreamSession
	proxy.RunOnOwnStack(func() { u = s.preLogin() })
	if u != nil {
		s.splice(u)
	}
}

// preLogin runs the dialogue before login and returns the upstream session
// of a successful one, else nil.
func (s *session) preLogin() *upstreamSession {
	s.log.Info("session start", "remote", s.tc.NetConn().RemoteAddr().String(), "tls", s.isTLS)
	if s.isTLS {
		// Implicit TLS (RFC 8314): handshake before the greeting, bounded.
		if err := s.handshake(s.conn.(*tls.Conn)); err != nil {
			return nil
		}
	}
	if !s.write("* OK [CAPABILITY " + s.capabilities() + "] broker ready") {
		return nil
	}
	// A drain wakes the read below, until the splice takes over the
	// client; the loop then says goodbye.
	stop := context.AfterFunc(s.srv.Drain, func() {
		s.drainMu.Lock()
		defer s.drainMu.Unlock()
		if !s.spliced {
			s.tc.NetConn().SetReadDeadline(time.Now())
		}
	})
	defer stop()
	for {
		s.conn.SetReadDeadline(s.deadline)
		if s.drained() {
			return nil
		}
		cmd, err := s.r.readCommand()
		if err != nil {
			if proxy.IsTimeout(err) && s.drained() {
				return nil
			}
			if s.readFailed(err) {
				return nil
			}
			continue
		}
		if s.execute(cmd) {
			u := s.loggedIn
			s.loggedIn = nil
			return u
		}
	}
}

// byeDrain is the goodbye of a stopping server.
const byeDrain = "* BYE Server shutting down, reconnect in a moment"

// drained ends a session not logged in when the server drains; it reports
// whether it did.
func (s *session) drained() bool {
	if s.srv.Drain.Err() == nil {
		return false
	}
	s.reason = "server shutting down"
	s.write(byeDrain)
	s.linger = true
	return true
}

func (s *session) logEnd() {
	obs := s.srv.Srv.Observer()
	obs.BytesRelayed(proxy.IMAP, proxy.Up, s.stats.Up)
	obs.BytesRelayed(proxy.IMAP, proxy.Down, s.stats.Down)
	reason := s.reason
	if s.tc.ClosedByServer() {
		reason = "server closed"
	}
	s.log.Info("session end",
		"remote", s.tc.NetConn().RemoteAddr().String(),
		"account", s.account,
		"bytes_up", s.stats.Up,
		"bytes_down", s.stats.Down,
		"duration", time.Since(s.tc.Accepted()).Round(time.Millisecond),
		"reason", reason)
}

// capabilities lists what the client may use before login.
func (s *session) capabilities() string {
	c := "IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN"
	if s.srv.TLS != nil && !s.isTLS {
		c += " STARTTLS"
	}
	return c
}

// write sends response lines at once. It returns false, with the session's
// end reason set, if the client cannot be written to.
func (s *session) write(lines ...string) bool {
	if err := s.writeErr(lines...); err != nil {
		s.reason = "client write: " + err.Error()
		return false
	}
	return true
}

func (s *session) writeErr(lines ...string) error {
	var b []byte
	for _, l := range lines {
		b = append(append(b, l...), "\r\n"...)
	}
	s.conn.SetWriteDeadline(time.Now().Add(s.srv.Limits.PreAuthTimeout))
	_, err := s.conn.Write(b)
	return err
}

// continueLiteral asks for a synchronising literal (RFC 3501 §7.5).
func (s *session) continueLiteral() error { return s.writeErr("+ Ready for literal data") }

// readFailed answers a failed read and reports whether the session ends.
func (s *session) readFailed(err error) (end bool) {
	var se *syntaxError
	switch {
	case errors.As(err, &se):
		tag := se.tag
		if tag == "" {
			tag = "*"
		}
		if se.fatal {
			s.reason = "protocol error: " + se.text
			s.write(tag+" BAD "+se.text, "* BYE "+se.text)
			s.linger = true
			return true
		}
		return s.refuse(tag + " BAD " + se.text)
	case proxy.IsTimeout(err):
		s.reason = "pre-login time limit"
		s.srv.Srv.CountPreAuthTimeout()
		s.write("* BYE Autologout; not logged in in time")
	case err == io.EOF:
		s.reason = "client closed"
	default:
		s.reason = "client read: " + err.Error()
	}
	return true
}

// refuse answers an invalid or refused command and ends the session when
// the client has sent too many.
func (s *session) refuse(reply string) (end bool) {
	s.bad++
	if s.bad >= maxBadCommands {
		s.reason = "too many invalid commands"
		s.write(reply, "* BYE Too many invalid commands")
		s.linger = true
		return true
	}
	return !s.write(reply)
}

func (s *session) execute(cmd *command) (end bool) {
	tag := cmd.tag
	switch cmd.name {
	case "CAPABILITY":
		return !s.write("* CAPABILITY "+s.capabilities(), tag+" OK CAPABILITY completed")
	case "NOOP":
		return !s.write(tag + " OK NOOP completed")
	case "LOGOUT":
		s.reason = "logout"
		s.write("* BYE Logging out", tag+" OK LOGOUT completed")
		return true
	case "ID":
		return !s.write(`* ID ("name" "broker")`, tag+" OK ID completed")
	case "ENABLE":
		// As Dovecot answers it: nothing can be enabled before login
		// (RFC 5161 §3.1 allows ENABLE only once authenticated).
		return !s.write("* ENABLED", tag+" OK ENABLE ignored in non-authenticated state.")
	case "STARTTLS":
		return s.startTLS(tag)
	case "LOGIN":
		return s.login(tag, "LOGIN", string(cmd.args[0]), string(cmd.args[1]))
	case "AUTHENTICATE":
		return s.authenticate(cmd)
	}
	if authenticatedCommands[cmd.name] {
		return s.refuse(tag + " BAD Log in first")
	}
	return s.refuse(tag + " BAD Unknown command")
}

// startTLS runs STARTTLS (RFC 3501 §6.2.1).
func (s *session) startTLS(tag string) (end bool) {
	if s.srv.TLS == nil || s.isTLS {
		return s.refuse(tag + " BAD STARTTLS not available")
	}
	if !s.write(tag + " OK Begin TLS negotiation now") {
		return true
	}
	// Whatever the client sent after the command was sent in plaintext
	// and may be an attacker's injection: the new reader drops it.
	conn := tls.Server(s.conn, s.srv.TLS)
	if err := s.handshake(conn); err != nil {
		return true
	}
	s.conn, s.isTLS = conn, true
	s.r = newCommandReader(conn, s.continueLiteral)
	return false
}

func (s *session) handshake(conn *tls.Conn) error {
	ctx, cancel := context.WithDeadline(s.srv.Srv.Context(), s.deadline)
	defer cancel()
	err := conn.HandshakeContext(ctx)
	if err != nil {
		s.reason = "tls handshake: " + err.Error()
	}
	return err
}

// authenticate runs AUTHENTICATE PLAIN or LOGIN (RFC 3501 §6.2.2, RFC
// 4616, draft-murchison-sasl-login) with or without an initial response
// (RFC 4959), through the SASL servers SMTP uses too.
func (s *session) authenticate(cmd *command) (end bool) {
	tag := cmd.tag
	var user, pass string
	check := func(u, p string) error {
		user, pass = u, p
		return nil
	}
	var srv interface {
		Next([]byte) ([]byte, bool, error)
	}
	mech := strings.ToUpper(string(cmd.args[0]))
	switch mech {
	case "PLAIN":
		srv = proxy.NewPlainServer(check)
	case "LOGIN":
		srv = proxy.NewLoginServer(check)
	default:
		s.log.Info("login failed", "mechanism", truncate(mech, 40), "reason", "unsupported mechanism")
		return s.refuse(tag + " NO [CANNOT] Unsupported authentication mechanism")
	}
	var resp []byte // nil: no initial response
	if len(cmd.args) == 2 {
		var ok bool
		if resp, ok = decodeSASLResponse(cmd.args[1]); !ok {
			return s.badBase64(tag, mech, user)
		}
	}
	for {
		challenge, done, err := srv.Next(resp)
		if r, ok := err.(*proxy.SASLRefusal); ok {
			return s.saslRefused(tag, mech, r)
		}
		if done {
			break
		}
		if !s.write("+ " + base64.StdEncoding.EncodeToString(challenge)) {
			return true
		}
		s.conn.SetReadDeadline(s.deadline)
		line, err := s.r.readResponseLine()
		if err != nil {
			return s.readFailed(err)
		}
		if string(line) == "*" {
			s.log.Info("login failed", "user", user, "mechanism", mech, "reason", "AUTHENTICATE cancelled by the client")
			return s.loginFailed(tag + " BAD AUTHENTICATE cancelled")
		}
		var ok bool
		if resp, ok = decodeSASLResponse(line); !ok {
			return s.badBase64(tag, mech, user)
		}
	}
	return s.login(tag, "AUTHENTICATE", user, pass)
}

// decodeSASLResponse decodes a base64 response; "=" is the empty initial
// response (RFC 4959), and an empty line an empty response.
func decodeSASLResponse(b []byte) ([]byte, bool) {
	if string(b) == "=" {
		return []byte{}, true
	}
	msg, err := base64.StdEncoding.DecodeString(string(b))
	if err != nil {
		return nil, false
	}
	if msg == nil {
		msg = []byte{}
	}
	return msg, true
}

// badBase64 logs and answers a response that is not base64.
func (s *session) badBase64(tag, mech, user string) (end bool) {
	s.log.Info("login failed", "user", user, "mechanism", mech, "reason", "response not in base64")
	return s.loginFailed(tag + " BAD Invalid base64")
}

// saslRefused logs and answers an exchange refused before the credentials
// were checked.
func (s *session) saslRefused(tag, mech string, r *proxy.SASLRefusal) (end bool) {
	proxy.LogSASLRefusal(s.log, mech, r)
	if r.Authzid {
		return s.loginFailed(tag + " NO [AUTHORIZATIONFAILED] Cannot act as another user")
	}
	return s.loginFailed(tag + " BAD Invalid " + mech + " response")
}

// loginFailed answers a failed login and ends the session after too many.
func (s *session) loginFailed(reply string) (end bool) {
	s.failures++
	if s.failures >= s.srv.Limits.MaxLoginFailures {
		s.reason = "too many failed logins"
		s.write(reply, "* BYE Too many failures")
		s.linger = true
		return true
	}
	return !s.write(reply)
}

// login checks the credentials, logs in upstream and, on success, leaves
// the upstream session in s.loggedIn. cmdName names the command in the OK.
func (s *session) login(tag, cmdName, user, pass string) (end bool) {
	ctx, cancel := context.WithTimeout(s.srv.Srv.Context(), s.srv.Limits.LoginTimeout+s.srv.Limits.ConnectionWait)
	defer cancel()
	login := &proxy.Login{Protocol: proxy.IMAP, Username: user, Password: pass, Remote: s.tc.NetConn().RemoteAddr()}
	authorize := func(ctx context.Context) (*proxy.Upstream, error) { return s.srv.opts.Auth.Authenticate(ctx, login) }
	u, up, le := proxy.LoginUpstream(ctx, s.srv.Pipeline, s.log, user, authorize, s.loginUpstream)
	if le != nil {
		// A failed login frees its mailbox's slot for the next attempt.
		if s.release != nil {
			s.release()
			s.release = nil
		}
		return s.loginFailed(tag + " NO " + loginReply(le))
	}
	s.account = up.Account
	if !s.write(tag + " OK " + capabilityCode(u.caps) + cmdName + " completed") {
		return true
	}
	s.loggedIn = u
	return true
}

// loginUpstream takes one of the mailbox's upstream sessions, unless the
// session kept one from an attempt upstream refused, and logs in upstream.
func (s *session) loginUpstream(ctx context.Context, up *proxy.Upstream) (*upstreamSession, error) {
	if s.release == nil {
		release, err := s.srv.Srv.TakeSlot(ctx, s.tc, up.Account)
		if err != nil {
			return nil, err
		}
		s.release = release
	}
	return s.srv.loginUpstream(ctx, s.tc, up)
}

// classifyFailure classifies a failed upstream login for the login
// pipeline: upstream's tagged NO or BAD is a refusal, explained if known.
func classifyFailure(err error) (le *proxy.LoginError, advice string, refusal error) {
	le = upstreamLoginError(err)
	var rej *rejection
	if !errors.As(err, &rej) {
		return le, "", nil
	}
	if e, ok := explain(rej.Text); ok {
		advice = e.advice
	}
	return le, advice, rej
}

// loginReply is the text of a failed login's NO (RFC 5530 codes). The
// detail stays in the log.
func loginReply(le *proxy.LoginError) string {
	switch le.Kind {
	case proxy.KindCredentials:
		return "[AUTHENTICATIONFAILED] Invalid credentials"
	case proxy.KindAccount:
		return "[AUTHENTICATIONFAILED] " + proxy.ReplyText(le.Reason, "Account not usable, contact your administrator")
	}
	return "[UNAVAILABLE] " + proxy.ReplyText(le.Reason, reasonUnavailable)
}

// capabilityCode returns "[CAPABILITY ...] " for upstream's
// capabilities (RFC 3501 §7.1), or "" if there are none fit to relay.
func capabilityCode(caps []string) string {
	var b strings.Builder
	for _, c := range caps {
		ok := c != ""
		for i := 0; i < len(c); i++ {
			ok = ok && isAtomChar(c[i])
		}
		if ok {
			b.WriteString(" " + c)
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return "[CAPABILITY" + b.String() + "] "
}

// splice relays the logged-in session. The pre-login readers' buffered
// bytes (commands the client pipelined after LOGIN, data upstream sent after
// its OK) go first; then the readers are dropped.
func (s *session) splice(u *upstreamSession) {
	clientPending, upstreamPending := buffered(s.r.br), buffered(u.br)
	client, upstream := s.conn, u.conn
	s.r, u.br = nil, nil
	s.drainMu.Lock()
	s.spliced = true
	s.drainMu.Unlock()
	client.SetDeadline(time.Time{})
	s.stats = proxy.SpliceWith(&proxy.SpliceOptions{
		Client: client, ClientPending: clientPending, Upstream: upstream, UpstreamPending: upstreamPending,
		CloseAll: s.tc.Close, Log: s.log,
		Drain: s.srv.Drain, Tracker: &tracker{}, Bye: byeDrain,
	})
	s.reason = s.stats.Reason
}

func buffered(br *bufio.Reader) []byte {
	if br.Buffered() == 0 {
		return nil
	}
	b, _ := br.Peek(br.Buffered())
	return append([]byte(nil), b...)
}
