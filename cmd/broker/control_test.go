package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailbroker/broker/broker"
)

type fakeAdmin struct {
	mu      sync.Mutex
	revoked string
	creds   *broker.Credentials
	calls   []string
}

func (f *fakeAdmin) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeAdmin) AddAppPassword(_ context.Context, mailbox, label string) (*broker.AppPasswordInfo, string, error) {
	return &broker.AppPasswordInfo{Mailbox: mailbox, ID: "abcdef", Label: label}, "secret", nil
}

func (f *fakeAdmin) AppPasswords(context.Context, string) ([]*broker.AppPasswordInfo, error) {
	return nil, nil
}

func (f *fakeAdmin) RevokeAppPassword(_ context.Context, mailbox, id string) error {
	f.revoked = mailbox + "/" + id
	return nil
}

func (f *fakeAdmin) SignedIn(_ context.Context, mailbox string, c *broker.Credentials) ([]string, error) {
	f.record("login " + mailbox)
	f.mu.Lock()
	f.creds = c
	f.mu.Unlock()
	return []string{mailbox, "shared@contoso.com"}, nil
}

func (f *fakeAdmin) Logout(_ context.Context, mailbox string) ([]string, error) {
	f.record("logout " + mailbox)
	return []string{mailbox}, nil
}

func (f *fakeAdmin) Statuses(_ context.Context, mailbox string) ([]broker.Status, error) {
	f.record("status " + mailbox)
	if mailbox == "nobody@contoso.com" {
		return nil, errors.New("nobody@contoso.com is not a configured account")
	}
	return []broker.Status{{Mailbox: "a@contoso.com", State: broker.StateOK}, {Mailbox: "b@contoso.com", State: broker.StateNeedsLogin}}, nil
}

func (f *fakeAdmin) AccessToken(_ context.Context, mailbox, scope string) (*broker.IssuedToken, error) {
	f.record("token " + mailbox + " " + scope)
	return &broker.IssuedToken{AccessToken: "eyJ-ACCESS-TOKEN", Expires: time.Unix(2e9, 0).UTC(), Scope: scope}, nil
}

func stats() *daemonStats { return &daemonStats{Sessions: 7} }

// handle sends req over a pipe and returns what the control server
// answered to peer p.
func handle(t *testing.T, s *controlServer, p peer, req string) *controlResponse {
	t.Helper()
	client, server := net.Pipe()
	go func() {
		client.Write([]byte(req))
		client.Close()
	}()
	defer server.Close()
	return s.handle(server, p)
}

func newTestServer(admin controlAdmin) *controlServer {
	return &controlServer{admin: admin, stats: stats, log: slog.New(slog.DiscardHandler), uid: 1234}
}

var root = peer{uid: 0, known: true}

func TestHandleControl(t *testing.T) {
	admin := &fakeAdmin{}
	s := newTestServer(admin)
	if resp := handle(t, s, root, ""); resp != nil {
		t.Fatalf("liveness probe: got %+v, want no response", resp)
	}
	resp := handle(t, s, root, `{"op":"app-password.revoke","mailbox":"a@b.c","id":"xyz123"}`)
	if resp.Error != "" || admin.revoked != "a@b.c/xyz123" {
		t.Fatalf("revoke: got %+v, revoked %q", resp, admin.revoked)
	}
	if resp := handle(t, s, root, `{"op":"stats"}`); resp.Stats == nil || resp.Stats.Sessions != 7 {
		t.Fatalf("stats: got %+v, want 7 sessions", resp)
	}
	if resp := handle(t, s, root, `{"op":"frob"}`); !strings.Contains(resp.Error, "unknown operation") {
		t.Fatalf("unknown op: got %+v", resp)
	}
	big := `{"op":"app-password.add","label":"` + strings.Repeat("x", maxControlBytes) + `"}`
	if resp := handle(t, s, root, big); !strings.HasPrefix(resp.Error, "bad request") {
		t.Fatalf("oversized request: got %+v, want it refused", resp)
	}
}

// The token operation is for root and the daemon's own user only, and
// refused when the kernel did not say who asks.
func TestControlTokenPeers(t *testing.T) {
	admin := &fakeAdmin{}
	s := newTestServer(admin)
	req := `{"op":"token","mailbox":"a@contoso.com"}`
	for _, p := range []peer{root, {uid: 1234, known: true}} {
		if resp := handle(t, s, p, req); resp.Error != "" || resp.Token == nil || resp.Token.AccessToken != "eyJ-ACCESS-TOKEN" {
			t.Errorf("peer %v: got %+v, want the token", p, resp)
		}
	}
	for _, p := range []peer{{uid: 1000, known: true}, {}} {
		resp := handle(t, s, p, req)
		if resp.Token != nil || !strings.Contains(resp.Error, "only handed to root and the broker service's user") {
			t.Errorf("peer %v: got %+v, want a refusal", p, resp)
		}
	}
	if len(admin.calls) != 2 {
		t.Errorf("the admin was asked %v, want two tokens only", admin.calls)
	}
}

func TestTokenPeerAllowed(t *testing.T) {
	tests := []struct {
		p    peer
		self int
		ok   bool
	}{
		{peer{0, true}, 998, true},
		{peer{998, true}, 998, true},
		{peer{1000, true}, 998, false},
		{peer{0, false}, 998, false},
		{peer{1000, true}, 1000, true}, // a daemon run by a user serves that user
	}
	for _, tt := range tests {
		err := tokenPeerAllowed(tt.p, tt.self)
		if (err == nil) != tt.ok {
			t.Errorf("tokenPeerAllowed(%+v, %d) = %v, want allowed %v", tt.p, tt.self, err, tt.ok)
		}
		if err != nil && tt.p.known && !strings.Contains(err.Error(), "uid 1000") {
			t.Errorf("refusal %q does not name the uid", err)
		}
	}
}

// Each operation goes from controlClient through a real socket to the
// server and back, as the CLI uses it; the log names operations, never
// credentials or tokens.
func TestControlRoundTrip(t *testing.T) {
	dir, err := os.MkdirTemp("", "ctl") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, controlFile)
	l, err := listenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	admin := &fakeAdmin{}
	var logBuf syncBuffer
	s := newTestServer(admin)
	s.log = slog.New(slog.NewTextHandler(&logBuf, nil))
	s.uid = os.Getuid()
	go s.serve(l)

	c, err := dialControl(path)
	if err != nil {
		t.Fatal(err)
	}
	var _ accountAdmin = c
	ctx := context.Background()
	creds := &broker.Credentials{User: "agent@contoso.com", AccessToken: "AT-SECRET", RefreshToken: "RT-SECRET", ExpiresIn: 3600, Password: "PW-SECRET"}
	accounts, err := c.SignedIn(ctx, "agent@contoso.com", creds)
	if err != nil || strings.Join(accounts, ",") != "agent@contoso.com,shared@contoso.com" {
		t.Fatalf("login: got %v, %v", accounts, err)
	}
	if got := admin.creds; got == nil || *got != *creds {
		t.Fatalf("login: the daemon got %+v, want %+v", got, creds)
	}
	if accounts, err := c.Logout(ctx, "agent@contoso.com"); err != nil || len(accounts) != 1 {
		t.Fatalf("logout: got %v, %v", accounts, err)
	}
	statuses, err := c.Statuses(ctx, "")
	if err != nil || len(statuses) != 2 || statuses[1].State != broker.StateNeedsLogin {
		t.Fatalf("status: got %+v, %v", statuses, err)
	}
	if _, err := c.Statuses(ctx, "nobody@contoso.com"); err == nil || !strings.Contains(err.Error(), "not a configured account") {
		t.Fatalf("status of an unknown mailbox: got %v", err)
	}
	tok, err := c.AccessToken(ctx, "agent@contoso.com", "https://graph.microsoft.com/.default")
	if err != nil || tok.AccessToken != "eyJ-ACCESS-TOKEN" || tok.Scope != "https://graph.microsoft.com/.default" || !tok.Expires.Equal(time.Unix(2e9, 0)) {
		t.Fatalf("token: got %+v, %v", tok, err)
	}
	want := []string{"login agent@contoso.com", "logout agent@contoso.com", "status ", "status nobody@contoso.com", "token agent@contoso.com https://graph.microsoft.com/.default"}
	if strings.Join(admin.calls, "|") != strings.Join(want, "|") {
		t.Fatalf("the admin was asked %q, want %q", admin.calls, want)
	}

	log := logBuf.String()
	for _, op := range []string{"op=login", "op=logout", "op=status", "op=token"} {
		if !strings.Contains(log, op) {
			t.Errorf("the log lacks %s:\n%s", op, log)
		}
	}
	for _, secret := range []string{"AT-SECRET", "RT-SECRET", "PW-SECRET", "eyJ-ACCESS-TOKEN"} {
		if strings.Contains(log, secret) {
			t.Errorf("the log holds %s:\n%s", secret, log)
		}
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
