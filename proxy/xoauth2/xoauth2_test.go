package xoauth2

import (
	"errors"
	"testing"
)

func TestClientServer(t *testing.T) {
	errBad := errors.New("bad token")
	auth := func(user, token string) error {
		if user == "a@b.c" && token == "good" {
			return nil
		}
		return errBad
	}
	tests := []struct {
		token   string
		wantErr error
	}{
		{"good", nil},
		{"bad", errBad},
	}
	for _, tt := range tests {
		c := NewClient("a@b.c", tt.token)
		s := NewServer(auth, nil)
		mech, ir, err := c.Start()
		if err != nil || mech != "XOAUTH2" {
			t.Fatalf("Start: got %q, %v", mech, err)
		}
		chal, done, err := s.Next(ir)
		for !done && err == nil {
			var resp []byte
			resp, err = c.Next(chal)
			if err != nil {
				t.Fatalf("client Next: %v", err)
			}
			chal, done, err = s.Next(resp)
		}
		if !errors.Is(err, tt.wantErr) {
			t.Fatalf("token %q: got %v, want %v", tt.token, err, tt.wantErr)
		}
		if tt.wantErr != nil && string(c.Challenge()) != DefaultErrorChallenge {
			t.Fatalf("challenge: got %q, want %q", c.Challenge(), DefaultErrorChallenge)
		}
	}
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		in          string
		user, token string
		ok          bool
	}{
		{"user=a@b\x01auth=Bearer tok\x01\x01", "a@b", "tok", true},
		{"user=a@b\x01host=x\x01auth=bearer tok\x01\x01", "a@b", "tok", true},
		{"user=a@b\x01auth=Bearer tok\x01", "", "", false},
		{"user=a@b\x01auth=Basic tok\x01\x01", "", "", false},
		{"auth=Bearer tok\x01\x01", "", "", false},
		{"user=a@b\x01\x01", "", "", false},
		{"garbage\x01\x01", "", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		user, token, err := ParseResponse([]byte(tt.in))
		if (err == nil) != tt.ok || user != tt.user || token != tt.token {
			t.Errorf("ParseResponse(%q) = %q, %q, %v; want %q, %q, ok=%v", tt.in, user, token, err, tt.user, tt.token, tt.ok)
		}
	}
}

func FuzzServer(f *testing.F) {
	f.Add([]byte("user=a@b\x01auth=Bearer tok\x01\x01"), []byte(""))
	f.Add([]byte("user=\x01\x01"), []byte("x"))
	f.Fuzz(func(t *testing.T, first, second []byte) {
		s := NewServer(func(user, token string) error {
			if user == "" || token == "" {
				t.Fatalf("authenticator called with empty user or token")
			}
			return errors.New("no")
		}, nil)
		for _, resp := range [][]byte{nil, first, second, second} {
			if _, done, _ := s.Next(resp); done {
				return
			}
		}
	})
}
