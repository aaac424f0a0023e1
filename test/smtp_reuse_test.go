package test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSMTPReuseAcrossReloadAndStop: a sender that connects per message
// logs in to Exchange once; a reload quits the connection kept for it, even
// while the replaced server still has a session, which keeps none when it
// ends; the next session logs in anew on the new server; and a stop does
// not wait for a kept connection (reuse_idle_timeout is far longer than
// the drain allowed here).
func TestSMTPReuseAcrossReloadAndStop(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{Config: `reuse_idle_timeout = "5m"` + drainConfig})
	ctx, cancel := context.WithTimeout(context.Background(), smtpWait)
	defer cancel()
	sendOne := func(i int) {
		t.Helper()
		c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
		if err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader(senderMessage(i))); err != nil {
			t.Fatalf("message %d: %v\n%s", i, err, env.Daemon.Log())
		}
		if err := c.Quit(); err != nil {
			t.Fatalf("QUIT: %v", err)
		}
		// The session has handed its connection over once it ended.
		env.Daemon.waitLogCount(`msg="session end" proto=smtp`, i)
	}
	// A session that stays through the reload keeps the old server, and
	// its connection, in use.
	holder := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
	sendOne(1)
	sendOne(2)
	if n := env.SMTP.Logins(); n != 2 {
		t.Fatalf("upstream logins for the holder and two sessions: got %d, want 2", n)
	}

	env.Daemon.cli("reload")
	if err := env.SMTP.WaitConnections(ctx, 1); err != nil {
		t.Fatalf("connections after the reload: %v, want the holder's only", err)
	}
	if err := holder.Quit(); err != nil {
		t.Fatal(err)
	}
	env.Daemon.waitLogCount(`msg="session end" proto=smtp`, 3)
	if err := env.SMTP.WaitConnections(ctx, 0); err != nil {
		t.Fatalf("connections after the holder left the replaced server: %v, want none kept", err)
	}
	sendOne(4)
	if n := env.SMTP.Logins(); n != 3 {
		t.Fatalf("upstream logins after the reload: got %d, want 3", n)
	}
	if err := env.SMTP.WaitConnections(ctx, 1); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	env.Daemon.cmd.Process.Signal(syscall.SIGTERM)
	took := env.Daemon.waitExit(t, start, 5*time.Second)
	if err := env.SMTP.WaitConnections(ctx, 0); err != nil {
		t.Fatalf("kept connection after the stop: %v", err)
	}
	if _, err := env.SMTP.WaitMessages(ctx, 3); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v with a kept connection", took)
}
