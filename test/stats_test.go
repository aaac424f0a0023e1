package test

import (
	"testing"
	"time"
)

// The stats a running daemon reports follow real sessions: one up while a
// client is logged in, back down once it has gone.
func TestStatsFollowSessions(t *testing.T) {
	env := newSimEnv(t)
	if n, _ := daemonStats(t, env.Daemon); n != 0 {
		t.Fatalf("%d sessions before any client", n)
	}
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatal(err)
	}
	second := dialProxy(t, env.Daemon.IMAPAddr)
	if err := second.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatal(err)
	}
	if n, _ := daemonStats(t, env.Daemon); n != 2 {
		t.Fatalf("%d sessions with two clients logged in, want 2", n)
	}
	if err := second.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	second.Close()
	waitSessions(t, env.Daemon, 1)
	c.Close()
	waitSessions(t, env.Daemon, 0)
}

// waitSessions polls the daemon's stats until it reports n sessions: a
// session is counted out just after broker logs its end, and nothing
// announces that moment.
func waitSessions(t *testing.T, d *daemon, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		got, _ := daemonStats(t, d)
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats say %d sessions 10s on, want %d", got, n)
		}
		<-tick.C
	}
}
