package main

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/mailbroker/broker/broker"
)

type fakeAdmin struct{ revoked string }

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

func stats() *daemonStats { return &daemonStats{Sessions: 7} }

// handle sends req over a pipe and returns what handleControl answered.
func handle(t *testing.T, admin appPasswordAdmin, req string) *controlResponse {
	t.Helper()
	client, server := net.Pipe()
	go func() {
		client.Write([]byte(req))
		client.Close()
	}()
	defer server.Close()
	return handleControl(server, admin, stats)
}

func TestHandleControl(t *testing.T) {
	admin := &fakeAdmin{}
	if resp := handle(t, admin, ""); resp != nil {
		t.Fatalf("liveness probe: got %+v, want no response", resp)
	}
	resp := handle(t, admin, `{"op":"app-password.revoke","mailbox":"a@b.c","id":"xyz123"}`)
	if resp.Error != "" || admin.revoked != "a@b.c/xyz123" {
		t.Fatalf("revoke: got %+v, revoked %q", resp, admin.revoked)
	}
	if resp := handle(t, admin, `{"op":"stats"}`); resp.Stats == nil || resp.Stats.Sessions != 7 {
		t.Fatalf("stats: got %+v, want 7 sessions", resp)
	}
	if resp := handle(t, admin, `{"op":"frob"}`); !strings.Contains(resp.Error, "unknown operation") {
		t.Fatalf("unknown op: got %+v", resp)
	}
	big := `{"op":"app-password.add","label":"` + strings.Repeat("x", maxControlBytes) + `"}`
	if resp := handle(t, admin, big); !strings.HasPrefix(resp.Error, "bad request") {
		t.Fatalf("oversized request: got %+v, want it refused", resp)
	}
}
