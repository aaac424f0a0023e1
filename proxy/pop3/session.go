package pop3

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
	// may send before login.
	maxBadCommands = 10
)

// Replies. Failed logins carry RFC 2449's and RFC 3206's response codes:
// [AUTH] for credentials (the same for a wrong password and an unknown
// user), [SYS/TEMP] for a failure that passes, [IN-USE] for a mailbox
// whose upstream sessions are all taken.
const (
	replyGreeting     = "+OK broker POP3 proxy ready"
	replyAuthFailed   = "-ERR [AUTH] Authentication failed"
	replyLoggedIn     = "+OK Logged in"
	replyBye          = "+OK broker signing off"
	replyNotLoggedIn  = "-ERR Not logged in"
	replyUnknown      = "-ERR Unknown command"
	replyLineTooLong  = "-ERR Line too long"
	replyBadChars     = "-ERR Invalid characters in command"
	replyTimeout      = "-ERR [SYS/TEMP] Not logged in in time, closing"
	replyTooManyBad   = "-ERR Too many invalid commands, closing"
	replyTooManyFails = "-ERR [AUTH] Too many failed logins, closing"
)

// transactionCommands are refused before login with "Not logged in"
// rather than as unknown (RFC 1939, RFC 2449, RFC 2595).
var transactionCommands = map[string]bool{
	"STAT": true, "LIST": true, "RETR": true, "DELE": true, "NOOP": true, "RSET": true,
	"TOP": true, "UIDL": true, "LAST": true, "UTF8": true, "LANG": true,
}

// session is one client connection: the AUTHORIZATION state handled here,
// then the splice to upstream.
type session struct {
	srv   *Server
	tc    *proxy.Conn
	conn  net.Conn // the client connection, a *tls.Conn once TLS is on
	isTLS bool
	br    *bufio.Reader
	log   *slog.Logger

	// user is USER's argument, until PASS.
	user string

	failures int // failed logins
	bad      int // invalid or refused commands

	// deadline ends the AUTHORIZATION state: every read before login,
	// however slowly the client trickles its bytes, stops there.
	deadline time.Time
	// release frees the session's upstream slot; nil while it holds none.
	release func()
	// linger is set when the session ends on the client's error while the
	// client may still be sending.
	linger bool

	// spliced is set, under drainMu, when the splice takes the client over.
	drainMu sync.Mutex
	spliced bool

	// loggedIn is upstream once the client's login succeeded and was
	// answered: the session ends its pre-login loop and splices.
	loggedIn *upstreamConn

	account string
	stats   proxy.SpliceStats
	reason  string // why the session ended
}

func newSession(srv *Server, tc *proxy.Conn) *session {
	s := &session{srv: srv, tc: tc, conn: tc.NetConn(), log: srv.Logger.With("session", tc.ID()),
		deadline: tc.Accepted().Add(srv.Limits.PreAuthTimeout)}
	_, s.isTLS = tc.NetConn().(*tls.Conn)
	s.br = bufio.NewReaderSize(s.conn, readBuffer)
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
	var u *upstreamConn
	proxy.RunOnOwnStack(func() { u = s.preLogin() })
	if u != nil {
		s.splice(u)
	}
}

// preLogin runs the AUTHORIZATION state and returns the upstream
// connection of a successful login, else nil.
func (s *session) preLogin() *upstreamConn {
	s.log.Info("session start", "remote", s.tc.NetConn().RemoteAddr().String(), "tls", s.isTLS)
	if s.isTLS {
		// Implicit TLS (RFC 8314): handshake before the greeting, bounded.
		if err := s.handshake(s.conn.(*tls.Conn)); err != nil {
			return nil
		}
	}
	if !s.write(replyGreeting) {
		return nil
	}
	// A drain wakes the reads of the AUTHORIZATION state, until the splice
	// takes over the client; the session then says goodbye.
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
		line, err := readLine(s.br, maxAuthLine)
		if err == nil && len(line) > maxCommandLine && !hasKeyword(line, "AUTH") {
			err = errLineTooLong
		}
		if err != nil {
			if proxy.IsTimeout(err) && s.drained() {
				return nil
			}
			if s.readFailed(err) {
				return nil
			}
			continue
		}
		if s.execute(parseCommand(line)) {
			u := s.loggedIn
			s.loggedIn = nil
			return u
		}
	}
}

// replyDrain answers a client not logged in when the server stops (RFC
// 2449's SYS/TEMP: try again later).
const replyDrain = "-ERR [SYS/TEMP] Server shutting down, reconnect in a moment"

// drained ends a session not logged in when the server drains, with
// replyDrain (an answer to the command the client sends next, or to the
// AUTH it is in); it reports whether it did.
func (s *session) drained() bool {
	if s.srv.Drain.Err() == nil {
		return false
	}
	s.reason = "server shutting down"
	s.write(replyDrain)
	s.linger = true
	return true
}

// hasKeyword reports whether line starts with the keyword kw.
func hasKeyword(line []byte, kw string) bool {
	return len(line) > len(kw) && line[len(kw)] == ' ' && strings.EqualFold(string(line[:len(kw)]), kw)
}

func (s *session) logEnd() {
	obs := s.srv.Srv.Observer()
	obs.BytesRelayed(proxy.POP3, proxy.Up, s.stats.Up)
	obs.BytesRelayed(proxy.POP3, proxy.Down, s.stats.Down)
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

// write sends reply lines at once. It returns false, with the session's end
// reason set, if the client cannot be written to.
func (s *session) write(lines ...string) bool {
	var b []byte
	for _, l := range lines {
		b = append(append(b, l...), "\r\n"...)
	}
	s.conn.SetWriteDeadline(time.Now().Add(s.srv.Limits.PreAuthTimeout))
	if _, err := s.conn.Write(b); err != nil {
		s.reason = "client write: " + err.Error()
		return false
	}
	return true
}

// readFailed answers a failed read and reports whether the session ends.
func (s *session) readFailed(err error) (end bool) {
	switch {
	case errors.Is(err, errLineTooLong):
		return s.refuse(replyLineTooLong)
	case errors.Is(err, errBadChars):
		return s.refuse(replyBadChars)
	case errors.Is(err, errLineRunaway):
		s.reason = "protocol error: line too long"
		s.write(replyLineTooLong)
		s.linger = true
	case proxy.IsTimeout(err):
		s.reason = "pre-login time limit"
		s.srv.Srv.CountPreAuthTimeout()
		s.write(replyTimeout)
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
		s.write(reply, replyTooManyBad)
		s.linger = true
		return true
	}
	return !s.write(reply)
}

// capabilities are CAPA's lines (RFC 2449 §5): upstream's that describe
// the TRANSACTION state, then the proxy's own.
func (s *session) capabilities() []string {
	caps := append([]string{}, *s.srv.caps.Load()...)
	caps = append(caps, "RESP-CODES", "AUTH-RESP-CODE", "USER", "SASL PLAIN LOGIN")
	if s.srv.TLS != nil && !s.isTLS {
		caps = append(caps, "STLS")
	}
	return append(caps, "IMPLEMENTATION broker")
}

func (s *session) execute(cmd *command) (end bool) {
	switch cmd.name {
	case "CAPA":
		lines := append([]string{"+OK Capability list follows"}, s.capabilities()...)
		return !s.write(append(lines, ".")...)
	case "QUIT":
		s.reason = "quit"
		s.write(replyBye)
		return true
	case "USER":
		if cmd.rest == "" || len(cmd.rest) > proxy.MaxSASLField {
			return s.refuse("-ERR Invalid user name")
		}
		s.user = cmd.rest
		return !s.write("+OK Send PASS")
	case "PASS":
		if s.user == "" {
			return s.refuse("-ERR Send USER first")
		}
		user := s.user
		s.user = ""
		if len(cmd.rest) > proxy.MaxSASLField {
			s.log.Info("login failed", "user", user, "mechanism", "USER", "reason", "password too long")
			return s.loginFailed(replyAuthFailed)
		}
		return s.login(user, cmd.rest)
	case "AUTH":
		s.user = ""
		return s.authenticate(cmd)
	case "STLS":
		return s.startTLS()
	case "APOP":
		return s.refuse("-ERR APOP not supported, use USER and PASS")
	}
	if transactionCommands[cmd.name] {
		return s.refuse(replyNotLoggedIn)
	}
	return s.refuse(replyUnknown)
}

// startTLS runs STLS (RFC 2595 §4).
func (s *session) startTLS() (end bool) {
	if s.srv.TLS == nil || s.isTLS {
		return s.refuse("-ERR STLS not available")
	}
	if !s.write("+OK Begin TLS negotiation") {
		return true
	}
	// Whatever the client sent after the command was sent in plaintext and
	// may be an attacker's injection: the new reader drops it, and USER
	// is forgotten.
	conn := tls.Server(s.conn, s.srv.TLS)
	if err := s.handshake(conn); err != nil {
		return true
	}
	s.conn, s.isTLS, s.user = conn, true, ""
	s.br = bufio.NewReaderSize(conn, readBuffer)
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

// authenticate runs AUTH (RFC 5034): without a mechanism it lists them;
// PLAIN and LOGIN go through the SASL servers IMAP and SMTP use too, with
// or without an initial response ("=" is the empty one).
func (s *session) authenticate(cmd *command) (end bool) {
	if len(cmd.args) == 0 {
		// The mechanism list some clients ask for before CAPA existed.
		return !s.write("+OK", "PLAIN", "LOGIN", ".")
	}
	if len(cmd.args) > 2 {
		return s.refuse("-ERR Invalid arguments")
	}
	var user, pass string
	check := func(u, p string) error {
		user, pass = u, p
		return nil
	}
	var srv interface {
		Next([]byte) ([]byte, bool, error)
	}
	mech := strings.ToUpper(cmd.args[0])
	switch mech {
	case "PLAIN":
		srv = proxy.NewPlainServer(check)
	case "LOGIN":
		srv = proxy.NewLoginServer(check)
	default:
		s.log.Info("login failed", "mechanism", truncate(proxy.ReplyText(mech, ""), 40), "reason", "unsupported mechanism")
		return s.refuse("-ERR Unsupported authentication mechanism")
	}
	var resp []byte // nil: no initial response
	if len(cmd.args) == 2 {
		var ok bool
		if resp, ok = decodeSASLResponse(cmd.args[1]); !ok {
			return s.badBase64(mech, user)
		}
	}
	for {
		challenge, done, err := srv.Next(resp)
		if r, ok := err.(*proxy.SASLRefusal); ok {
			return s.saslRefused(mech, r)
		}
		if done {
			break
		}
		if !s.write("+ " + base64.StdEncoding.EncodeToString(challenge)) {
			return true
		}
		s.conn.SetReadDeadline(s.deadline)
		if s.drained() {
			return true
		}
		line, err := readLine(s.br, maxAuthLine)
		if err != nil {
			if proxy.IsTimeout(err) && s.drained() {
				return true
			}
			if errors.Is(err, errLineTooLong) || errors.Is(err, errBadChars) {
				s.log.Info("login failed", "user", user, "mechanism", mech, "reason", "invalid response line")
				return s.loginFailed("-ERR Invalid " + mech + " response")
			}
			return s.readFailed(err)
		}
		if string(line) == "*" {
			s.log.Info("login failed", "user", user, "mechanism", mech, "reason", "AUTH cancelled by the client")
			return s.loginFailed("-ERR AUTH cancelled")
		}
		var ok bool
		if resp, ok = decodeSASLResponse(string(line)); !ok {
			return s.badBase64(mech, user)
		}
	}
	return s.login(user, pass)
}

// decodeSASLResponse decodes a base64 response; "=" is the empty initial
// response (RFC 5034 §4), and an empty line an empty response.
func decodeSASLResponse(s string) ([]byte, bool) {
	if s == "=" {
		return []byte{}, true
	}
	msg, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, false
	}
	if msg == nil {
		msg = []byte{}
	}
	return msg, true
}

// badBase64 logs and answers a response that is not base64.
func (s *session) badBase64(mech, user string) (end bool) {
	s.log.Info("login failed", "user", user, "mechanism", mech, "reason", "response not in base64")
	return s.loginFailed("-ERR Invalid base64")
}

// saslRefused logs and answers an exchange refused before the credentials
// were checked.
func (s *session) saslRefused(mech string, r *proxy.SASLRefusal) (end bool) {
	proxy.LogSASLRefusal(s.log, mech, r)
	if r.Authzid {
		return s.loginFailed("-ERR [AUTH] Cannot act as another user")
	}
	return s.loginFailed("-ERR Invalid " + mech + " response")
}

// loginFailed answers a failed login and ends the session after too many.
func (s *session) loginFailed(reply string) (end bool) {
	s.failures++
	if s.failures >= s.srv.Limits.MaxLoginFailures {
		s.reason = "too many failed logins"
		s.write(reply, replyTooManyFails)
		s.linger = true
		return true
	}
	return !s.write(reply)
}

// login checks the credentials, logs in upstream and, on success, leaves
// the upstream connection in s.loggedIn: the client's +OK follows
// upstream's.
func (s *session) login(user, pass string) (end bool) {
	ctx, cancel := context.WithTimeout(s.srv.Srv.Context(), s.srv.Limits.LoginTimeout+s.srv.Limits.ConnectionWait)
	defer cancel()
	login := &proxy.Login{Protocol: proxy.POP3, Username: user, Password: pass, Remote: s.tc.NetConn().RemoteAddr()}
	authorize := func(ctx context.Context) (*proxy.Upstream, error) { return s.srv.opts.Auth.Authenticate(ctx, login) }
	u, up, le := proxy.LoginUpstream(ctx, s.srv.Pipeline, s.log, user, authorize, s.loginUpstream)
	if le != nil {
		// A failed login frees its mailbox's slot for the next attempt.
		if s.release != nil {
			s.release()
			s.release = nil
		}
		return s.loginFailed(loginReply(le))
	}
	s.account = up.Account
	if !s.write(replyLoggedIn) {
		return true
	}
	s.loggedIn = u
	return true
}

// loginUpstream takes one of the mailbox's upstream sessions, unless the
// session kept one from an attempt upstream refused, and logs in upstream.
func (s *session) loginUpstream(ctx context.Context, up *proxy.Upstream) (*upstreamConn, error) {
	if s.release == nil {
		release, err := s.srv.Srv.TakeSlot(ctx, s.tc, up.Account)
		if err != nil {
			return nil, err
		}
		s.release = release
	}
	return s.srv.loginUpstream(ctx, s.tc, up)
}

// loginReply is a failed login's -ERR with its response code. The detail
// stays in the log.
func loginReply(le *proxy.LoginError) string {
	switch {
	case le.Kind == proxy.KindCredentials:
		return replyAuthFailed
	case le.Kind == proxy.KindAccount:
		return "-ERR [AUTH] " + proxy.ReplyText(le.Reason, "Account not usable, contact your administrator")
	case le.Reason == proxy.ReasonMailboxBusy:
		return "-ERR [IN-USE] " + le.Reason
	}
	return "-ERR [SYS/TEMP] " + proxy.ReplyText(le.Reason, reasonUnavailable)
}

// splice relays the logged-in session. What the client pipelined after its
// login and what upstream sent after its +OK go first; then the readers
// are dropped.
//
// A drain closes the session once the tracker is quiet, without a word
// (Bye ""): POP3 has no unsolicited response (RFC 1939), and a line the
// client did not ask for would be read as the answer to its next command.
// A connection closed between commands is what every client already
// handles, as an aborted session; and since no QUIT reaches upstream, its
// UPDATE state never runs: messages marked with DELE stay, as they must
// when the client did not end the session itself.
func (s *session) splice(u *upstreamConn) {
	clientPending, upstreamPending := buffered(s.br), buffered(u.br)
	client, upstream := s.conn, u.conn
	s.br, u.br = nil, nil
	s.drainMu.Lock()
	s.spliced = true
	s.drainMu.Unlock()
	client.SetDeadline(time.Time{})
	s.stats = proxy.SpliceWith(&proxy.SpliceOptions{
		Client: client, ClientPending: clientPending, Upstream: upstream, UpstreamPending: upstreamPending,
		CloseAll: s.tc.Close, Log: s.log,
		Drain: s.srv.Drain, Tracker: &tracker{},
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

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
