package proxy

import (
	"bytes"
	"log/slog"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// The SASL servers here are shared by IMAP (AUTHENTICATE) and SMTP (AUTH).
// They parse the exchange and hand the credentials to a saslCredentials
// function; what they refuse before that is a *saslRefusal, which each
// protocol turns into its own reply.

// saslCredentials checks a username and password taken from a SASL
// exchange. Its error ends the exchange as it is.
type saslCredentials func(username, password string) error

// maxSASLField bounds a username or password: RFC 4616 §2 allows 255
// octets each for PLAIN; app passwords and mailbox names are far shorter.
const maxSASLField = 255

// saslRefusal is an exchange refused before the credentials were checked.
type saslRefusal struct {
	// Reason says why, for the log.
	Reason string
	// User is the authentication identity, when it was read.
	User string
	// Authzid: the client asked to act as another user (otherwise the
	// response was malformed).
	Authzid bool
}

func (e *saslRefusal) Error() string { return e.Reason }

func malformed(reason string) *saslRefusal { return &saslRefusal{Reason: reason} }

// parsePlain parses a PLAIN message (RFC 4616 §2): [authzid] NUL authcid
// NUL passwd. An authzid other than the user itself is refused.
func parsePlain(msg []byte) (user, pass string, err error) {
	if len(msg) == 0 {
		return "", "", malformed("empty PLAIN response")
	}
	authzid, rest, ok1 := bytes.Cut(msg, []byte{0})
	u, p, ok2 := bytes.Cut(rest, []byte{0})
	if !ok1 || !ok2 || len(u) == 0 || len(u) > maxSASLField || len(p) > maxSASLField ||
		bytes.IndexByte(p, 0) >= 0 {
		return "", "", malformed("malformed PLAIN response")
	}
	if len(authzid) > 0 && !strings.EqualFold(string(authzid), string(u)) {
		return "", "", &saslRefusal{Reason: "authorization identity differs from the user", User: string(u), Authzid: true}
	}
	return string(u), string(p), nil
}

// plainServer is the server side of PLAIN (RFC 4616). go-sasl has one, but
// it fails malformed input with an error go-smtp would send as a
// temporary 454 with the library's text.
type plainServer struct {
	check  saslCredentials
	asked  bool
	closed bool
}

func newPlainServer(check saslCredentials) sasl.Server { return &plainServer{check: check} }

func (s *plainServer) Next(response []byte) (challenge []byte, done bool, err error) {
	if s.closed {
		return nil, true, malformed("PLAIN exchange already finished")
	}
	if response == nil && !s.asked {
		// No initial response: ask for it with an empty challenge (RFC 4954 §4).
		s.asked = true
		return []byte{}, false, nil
	}
	s.closed = true
	user, pass, err := parsePlain(response)
	if err != nil {
		return nil, true, err
	}
	return nil, true, s.check(user, pass)
}

// loginServer is the server side of the obsolete LOGIN mechanism
// (draft-murchison-sasl-login-00), which go-sasl lacks and old clients
// still use: "Username:" and "Password:" challenges, the username possibly
// sent as the initial response.
type loginServer struct {
	check    saslCredentials
	step     int // 0: want username, 1: want password, 2: done
	username string
}

var (
	loginUsernameChallenge = []byte("Username:")
	loginPasswordChallenge = []byte("Password:")
)

func newLoginServer(check saslCredentials) sasl.Server { return &loginServer{check: check} }

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		if response == nil {
			s.step = -1 // the next response is the username
			return loginUsernameChallenge, false, nil
		}
		return s.gotUsername(response)
	case -1:
		return s.gotUsername(response)
	case 1:
		s.step = 2
		if len(response) > maxSASLField {
			return nil, true, &saslRefusal{Reason: "LOGIN password too long", User: s.username}
		}
		return nil, true, s.check(s.username, string(response))
	}
	return nil, true, malformed("LOGIN exchange already finished")
}

func (s *loginServer) gotUsername(response []byte) ([]byte, bool, error) {
	s.step = 2
	switch {
	case len(response) == 0:
		return nil, true, malformed("empty LOGIN username")
	case len(response) > maxSASLField || bytes.IndexByte(response, 0) >= 0:
		return nil, true, malformed("malformed LOGIN username")
	}
	s.username = string(response)
	s.step = 1
	return loginPasswordChallenge, false, nil
}

// logSASLRefusal logs a login refused by a SASL server, once.
func logSASLRefusal(log *slog.Logger, mech string, r *saslRefusal) {
	log.Info("login failed", "user", r.User, "mechanism", mech, "reason", r.Reason)
}

// Replies to a refused SMTP AUTH exchange (RFC 4954 §6).
var (
	errSMTPSASLMalformed = &smtp.SMTPError{
		Code:         501,
		EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message:      "Malformed authentication response",
	}
	errSMTPSASLAuthzid = &smtp.SMTPError{
		Code:         535,
		EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message:      "Cannot authorize as another user",
	}
)

// smtpSASLServer adapts a shared SASL server to go-smtp, which sends an
// error other than *smtp.SMTPError as a 454 with its text: a refusal gets
// its SMTP reply and its log line here.
type smtpSASLServer struct {
	sasl.Server
	mech string
	log  *slog.Logger
}

func (s *smtpSASLServer) Next(response []byte) (challenge []byte, done bool, err error) {
	challenge, done, err = s.Server.Next(response)
	if r, ok := err.(*saslRefusal); ok {
		logSASLRefusal(s.log, s.mech, r)
		if r.Authzid {
			return nil, true, errSMTPSASLAuthzid
		}
		return nil, true, errSMTPSASLMalformed
	}
	return challenge, done, err
}
