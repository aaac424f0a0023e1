package proxy

import (
	"bytes"
	"log/slog"
	"strings"

	"github.com/emersion/go-sasl"
)

// The SASL servers here are shared by IMAP (AUTHENTICATE), SMTP (AUTH) and
// POP3 (AUTH, RFC 5034). They parse the exchange and hand the credentials to
// a check function, whose error ends the exchange as it is; what they refuse
// before that is a *SASLRefusal, which each protocol turns into its own
// reply.

// MaxSASLField bounds a username or password: RFC 4616 §2 allows 255
// octets each for PLAIN; app passwords and mailbox names are far shorter.
const MaxSASLField = 255

// SASLRefusal is an exchange refused before the credentials were checked.
type SASLRefusal struct {
	// Reason says why, for the log.
	Reason string
	// User is the authentication identity, when it was read.
	User string
	// Authzid: the client asked to act as another user (otherwise the
	// response was malformed).
	Authzid bool
}

func (e *SASLRefusal) Error() string { return e.Reason }

func malformed(reason string) *SASLRefusal { return &SASLRefusal{Reason: reason} }

// parsePlain parses a PLAIN message (RFC 4616 §2): [authzid] NUL authcid
// NUL passwd. An authzid other than the user itself is refused.
func parsePlain(msg []byte) (user, pass string, err error) {
	if len(msg) == 0 {
		return "", "", malformed("empty PLAIN response")
	}
	authzid, rest, ok1 := bytes.Cut(msg, []byte{0})
	u, p, ok2 := bytes.Cut(rest, []byte{0})
	if !ok1 || !ok2 || len(u) == 0 || len(u) > MaxSASLField || len(p) > MaxSASLField ||
		bytes.IndexByte(p, 0) >= 0 {
		return "", "", malformed("malformed PLAIN response")
	}
	if len(authzid) > 0 && !strings.EqualFold(string(authzid), string(u)) {
		return "", "", &SASLRefusal{Reason: "authorization identity differs from the user", User: string(u), Authzid: true}
	}
	return string(u), string(p), nil
}

// plainServer is the server side of PLAIN (RFC 4616). go-sasl has one, but
// it fails malformed input with an error go-smtp would send as a
// temporary 454 with the library's text.
type plainServer struct {
	check  func(username, password string) error
	asked  bool
	closed bool
}

// NewPlainServer returns the server side of PLAIN (RFC 4616), which hands
// the credentials to check. An authorization identity other than the user
// itself is refused.
func NewPlainServer(check func(username, password string) error) sasl.Server {
	return &plainServer{check: check}
}

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
	check    func(username, password string) error
	step     int // 0: want username, 1: want password, 2: done
	username string
}

var (
	loginUsernameChallenge = []byte("Username:")
	loginPasswordChallenge = []byte("Password:")
)

// NewLoginServer returns the server side of the obsolete LOGIN mechanism
// (draft-murchison-sasl-login-00), which hands the credentials to check.
func NewLoginServer(check func(username, password string) error) sasl.Server {
	return &loginServer{check: check}
}

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
		if len(response) > MaxSASLField {
			return nil, true, &SASLRefusal{Reason: "LOGIN password too long", User: s.username}
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
	case len(response) > MaxSASLField || bytes.IndexByte(response, 0) >= 0:
		return nil, true, malformed("malformed LOGIN username")
	}
	s.username = string(response)
	s.step = 1
	return loginPasswordChallenge, false, nil
}

// LogSASLRefusal logs a login refused by a SASL server, once.
func LogSASLRefusal(log *slog.Logger, mech string, r *SASLRefusal) {
	log.Info("login failed", "user", r.User, "mechanism", mech, "reason", r.Reason)
}
