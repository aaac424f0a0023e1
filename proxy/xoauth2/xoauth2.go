// Package xoauth2 implements the SASL XOAUTH2 mechanism used by Microsoft
// 365 and Gmail: a client for logging in upstream and a server for test
// upstreams. go-sasl does not carry it.
//
// The initial response is
//
//	"user=" user "\x01auth=Bearer " token "\x01\x01"
//
// and a failure may be announced with a base64 JSON challenge that the client
// must answer with an empty response before the server sends its final error.
package xoauth2

import (
	"bytes"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
)

// Mechanism is the SASL mechanism name.
const Mechanism = "XOAUTH2"

// ErrInvalidResponse is returned by the server for a malformed response.
var ErrInvalidResponse = errors.New("xoauth2: invalid client response")

type client struct {
	user, token string
	challenge   []byte
}

// Client is an XOAUTH2 client. Challenge returns the error challenge the
// server sent, if any; it explains why a login failed.
type Client interface {
	sasl.Client
	Challenge() []byte
}

// NewClient returns a client that logs in as user with an OAuth 2.0 bearer
// token.
func NewClient(user, token string) Client {
	return &client{user: user, token: token}
}

func (c *client) Start() (mech string, ir []byte, err error) {
	return Mechanism, Response(c.user, c.token), nil
}

// Next answers an error challenge with an empty response: returning an error
// here would leave some clients waiting, and nil would make others take the
// next line as the server's answer.
func (c *client) Next(challenge []byte) ([]byte, error) {
	c.challenge = append([]byte(nil), challenge...)
	return []byte{}, nil
}

func (c *client) Challenge() []byte { return c.challenge }

// Response builds the initial client response.
func Response(user, token string) []byte {
	return []byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

// ParseResponse splits an initial client response into user and token.
func ParseResponse(resp []byte) (user, token string, err error) {
	rest, ok := bytes.CutSuffix(resp, []byte("\x01\x01"))
	if !ok {
		return "", "", ErrInvalidResponse
	}
	for _, field := range bytes.Split(rest, []byte("\x01")) {
		k, v, ok := bytes.Cut(field, []byte("="))
		if !ok {
			return "", "", ErrInvalidResponse
		}
		switch string(k) {
		case "user":
			user = string(v)
		case "auth":
			scheme, tok, ok := strings.Cut(string(v), " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return "", "", ErrInvalidResponse
			}
			token = tok
		default:
			// RFC 7628 allows further key=value pairs (host=, port=).
		}
	}
	if user == "" || token == "" {
		return "", "", ErrInvalidResponse
	}
	return user, token, nil
}

// Authenticator checks a user and bearer token. The returned error is
// reported after the error challenge.
type Authenticator func(user, token string) error

// DefaultErrorChallenge is what Exchange Online sends on failure.
const DefaultErrorChallenge = `{"status":"401","schemes":"bearer","scope":"https://outlook.office.com/"}`

type server struct {
	auth      Authenticator
	challenge []byte
	state     int
	err       error
}

const (
	stateStart = iota
	stateFailed
	stateDone
)

// NewServer returns a server that checks logins with auth and, on failure,
// sends challenge (DefaultErrorChallenge when nil) before its final error.
func NewServer(auth Authenticator, challenge []byte) sasl.Server {
	if challenge == nil {
		challenge = []byte(DefaultErrorChallenge)
	}
	return &server{auth: auth, challenge: challenge}
}

func (s *server) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.state {
	case stateStart:
		if response == nil {
			// No initial response: ask for one with an empty challenge.
			return []byte{}, false, nil
		}
		user, token, err := ParseResponse(response)
		if err != nil {
			s.state = stateDone
			return nil, true, err
		}
		if err := s.auth(user, token); err != nil {
			s.state, s.err = stateFailed, err
			return s.challenge, false, nil
		}
		s.state = stateDone
		return nil, true, nil
	case stateFailed:
		s.state = stateDone
		return nil, true, s.err
	}
	return nil, true, errors.New("xoauth2: unexpected response")
}
