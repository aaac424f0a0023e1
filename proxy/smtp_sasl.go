package proxy

import (
	"bytes"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// saslCredentials checks a username and password taken from a SASL
// exchange. Its error is the final reply to AUTH.
type saslCredentials func(username, password string) error

// maxSASLField bounds a username or password: RFC 4616 §2 allows 255
// octets each for PLAIN; app passwords and mailbox names are far shorter.
const maxSASLField = 255

var (
	errSASLMalformed = &smtp.SMTPError{
		Code:         501,
		EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message:      "Malformed authentication response",
	}
	errSASLAuthzid = &smtp.SMTPError{
		Code:         535,
		EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message:      "Cannot authorize as another user",
	}
)

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
		return nil, true, errSASLMalformed
	}
	if response == nil && !s.asked {
		// No initial response: ask for it with an empty challenge (RFC 4954 §4).
		s.asked = true
		return []byte{}, false, nil
	}
	s.closed = true
	authzid, rest, ok1 := bytes.Cut(response, []byte{0})
	user, pass, ok2 := bytes.Cut(rest, []byte{0})
	if !ok1 || !ok2 || len(user) == 0 || len(user) > maxSASLField || len(pass) > maxSASLField ||
		bytes.IndexByte(pass, 0) >= 0 {
		return nil, true, errSASLMalformed
	}
	if len(authzid) > 0 && !strings.EqualFold(string(authzid), string(user)) {
		return nil, true, errSASLAuthzid
	}
	return nil, true, s.check(string(user), string(pass))
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
			return nil, true, errSASLMalformed
		}
		return nil, true, s.check(s.username, string(response))
	}
	return nil, true, errSASLMalformed
}

func (s *loginServer) gotUsername(response []byte) ([]byte, bool, error) {
	if len(response) == 0 || len(response) > maxSASLField || bytes.IndexByte(response, 0) >= 0 {
		s.step = 2
		return nil, true, errSASLMalformed
	}
	s.username = string(response)
	s.step = 1
	return loginPasswordChallenge, false, nil
}
