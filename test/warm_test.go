package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

// TestWarmConnectionsAcrossReload: a login leaves a warm connection open
// at upstream (warm_connections defaults to 4); a reload that names another
// upstream closes it, though the replaced server still serves a session,
// and the next login warms the new upstream only.
func TestWarmConnectionsAcrossReload(t *testing.T) {
	env := newOpsEnv(t, "", mailbox)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	idler := startIdle(t, env.Daemon.IMAPAddr, mailbox, env.Password)
	if err := env.Upstream.WaitSessions(ctx, 2); err != nil {
		t.Fatalf("waiting for the session and one warm connection at upstream, %d open: %v", env.Upstream.Sessions(), err)
	}

	up2, err := m365sim.NewIMAP(env.Entra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up2.Close() })
	if err := up2.AddMailbox(mailbox); err != nil {
		t.Fatal(err)
	}
	ca2 := writeFile(t, t.TempDir(), "upstream2-ca.pem", up2.CACertPEM())
	cfg := env.config(`listen = ["127.0.0.1:0"]`, "", mailbox)
	cfg = strings.Replace(cfg, env.Upstream.Addr(), up2.Addr(), 1)
	cfg = strings.Replace(cfg, env.ca, ca2, 1)
	env.rewrite(t, cfg)
	if code, out, errOut := env.reload(t); code != 0 {
		t.Fatalf("broker reload: exit %d, %q, %q", code, out, errOut)
	}
	if err := env.Upstream.WaitSessions(ctx, 1); err != nil {
		t.Fatalf("the old upstream keeps %d connections after the reload, want the IDLE session's: %v", env.Upstream.Sessions(), err)
	}
	appendMessage(t, env.Daemon.IMAPAddr, mailbox, env.Password, "after the reload")
	if err := up2.WaitSessions(ctx, 1); err != nil {
		t.Fatalf("waiting for one warm connection at the new upstream, %d open: %v", up2.Sessions(), err)
	}
	if n := env.Upstream.Sessions(); n != 1 {
		t.Fatalf("the old upstream has %d connections, want the IDLE session's", n)
	}
	if err := idler.idle.Close(); err != nil {
		t.Fatalf("DONE: %v", err)
	}
	if err := idler.idle.Wait(); err != nil {
		t.Fatalf("IDLE across the reload: %v", err)
	}
}
