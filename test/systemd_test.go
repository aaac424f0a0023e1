package test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// notifySocket is a NOTIFY_SOCKET the test owns: it collects what broker
// sends with sd_notify.
type notifySocket struct {
	t    *testing.T
	path string
	conn *net.UnixConn

	mu   sync.Mutex
	msgs []string
	got  chan struct{} // closed and replaced on every message
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &notifySocket{t: t, path: filepath.Join(dir, "notify.sock"), got: make(chan struct{})}
	n.conn, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			m, err := n.conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:m]))
			close(n.got)
			n.got = make(chan struct{})
			n.mu.Unlock()
		}
	}()
	return n
}

// env is what the daemon needs to find the socket.
func (n *notifySocket) env() string { return "NOTIFY_SOCKET=" + n.path }

// wait waits for a message for which ok holds, and returns it.
func (n *notifySocket) wait(what string, ok func(string) bool) string {
	n.t.Helper()
	timeout := time.After(20 * time.Second)
	for i := 0; ; {
		n.mu.Lock()
		msgs, got := n.msgs, n.got
		n.mu.Unlock()
		for ; i < len(msgs); i++ {
			if ok(msgs[i]) {
				return msgs[i]
			}
		}
		select {
		case <-got:
		case <-timeout:
			n.t.Fatalf("no %s on NOTIFY_SOCKET within 20s; got %q", what, msgs)
		}
	}
}

func (n *notifySocket) count(substr string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, m := range n.msgs {
		if strings.Contains(m, substr) {
			c++
		}
	}
	return c
}

func withEnv(vars ...string) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) { cmd.Env = append(os.Environ(), vars...) }
}

// TestNotifyReadyStatusReload: READY=1 with a STATUS= line, the line kept
// current (an account served, a session open), RELOADING=1 with
// MONOTONIC_USEC= then READY=1 around a reload, STOPPING=1 at the end.
func TestNotifyReadyStatusReload(t *testing.T) {
	n := newNotifySocket(t)
	env := newOpsEnvWith(t, opsOptions{Prepare: withEnv(n.env())}, mailbox)
	ready := n.wait("READY=1", func(m string) bool { return strings.Contains(m, "READY=1") })
	if !strings.Contains(ready, "STATUS=") {
		t.Fatalf("READY=1 without a STATUS= line: %q", ready)
	}
	idler := startIdle(t, env.Daemon.IMAPAddr, mailbox, env.Password)
	status := n.wait("a STATUS= line with the session and the account", func(m string) bool {
		return strings.Contains(m, "STATUS=1 sessions (imap 1); accounts: 1 ok, 0 need attention")
	})
	t.Logf("status: %q", status)

	if code, _, errOut := env.reload(t); code != 0 {
		t.Fatalf("broker reload: exit %d, %q", code, errOut)
	}
	reloading := n.wait("RELOADING=1", func(m string) bool { return strings.Contains(m, "RELOADING=1") })
	if !strings.Contains(reloading, "MONOTONIC_USEC=") {
		t.Fatalf("RELOADING=1 without MONOTONIC_USEC=: %q", reloading)
	}
	if n.count("READY=1") < 2 {
		n.wait("READY=1 after the reload", func(string) bool { return n.count("READY=1") >= 2 })
	}
	idler.idle.Close()
	idler.idle.Wait()

	env.Daemon.cmd.Process.Signal(syscall.SIGTERM)
	n.wait("STOPPING=1", func(m string) bool { return strings.Contains(m, "STOPPING=1") })
	env.Daemon.waitExit(t, time.Now(), 10*time.Second)
}

// TestWatchdogPings: with WATCHDOG_USEC set, WATCHDOG=1 comes at half the
// interval.
func TestWatchdogPings(t *testing.T) {
	n := newNotifySocket(t)
	newOpsEnvWith(t, opsOptions{Prepare: withEnv(n.env(), "WATCHDOG_USEC=400000")}, mailbox)
	start := time.Now()
	n.wait("five WATCHDOG=1", func(string) bool { return n.count("WATCHDOG=1") >= 5 })
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("five pings took %v at a 400ms watchdog", took)
	}
	// Another process's watchdog is not ours.
	m := newNotifySocket(t)
	newOpsEnvWith(t, opsOptions{Prepare: withEnv(m.env(), "WATCHDOG_USEC=400000", "WATCHDOG_PID=1")}, mailbox)
	m.wait("READY=1", func(s string) bool { return strings.Contains(s, "READY=1") })
	time.Sleep(time.Second)
	if c := m.count("WATCHDOG=1"); c != 0 {
		t.Fatalf("%d pings for WATCHDOG_PID=1", c)
	}
}

// activated passes listeners to broker as systemd does: LISTEN_FDS,
// LISTEN_FDNAMES, and LISTEN_PID set to broker's own PID (by a shell that
// execs it).
func activated(names string, files ...*os.File) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) {
		cmd.Args = append([]string{"sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`}, cmd.Args...)
		cmd.Path = "/bin/sh"
		cmd.Env = append(os.Environ(), fmt.Sprintf("LISTEN_FDS=%d", len(files)), "LISTEN_FDNAMES="+names)
		cmd.ExtraFiles = files
	}
}

func listenerFile(t *testing.T) (*os.File, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // f keeps the socket
	t.Cleanup(func() { f.Close() })
	return f, addr
}

// TestSocketActivation: broker serves IMAP on a socket systemd passed;
// one the configuration does not name is closed; a connection made while
// broker restarts waits in the socket's queue and is served by the next
// broker.
func TestSocketActivation(t *testing.T) {
	imapFile, imapAddr := listenerFile(t)
	strayFile, _ := listenerFile(t)
	listen := fmt.Sprintf("listen = [%q]", imapAddr)
	env := newOpsEnvWith(t, opsOptions{Listen: listen, Prepare: activated("broker.socket:stray", imapFile, strayFile)}, mailbox)
	if env.Daemon.IMAPAddr != imapAddr {
		t.Fatalf("broker listens on %s, want the passed socket's %s", env.Daemon.IMAPAddr, imapAddr)
	}
	env.Daemon.waitLog("msg=\"socket passed by systemd\" name=broker.socket addr=" + imapAddr)
	env.Daemon.waitLog("configuration does not listen on; closing it")
	c := dialProxy(t, imapAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("LOGIN through the passed socket: %v", err)
	}
	c.Logout().Wait()

	// A restart: the socket stays open here (as in systemd), so a client
	// connecting in between is queued, not refused.
	env.Daemon.cmd.Process.Signal(syscall.SIGTERM)
	env.Daemon.waitExit(t, time.Now(), 10*time.Second)
	waiting, err := net.Dial("tcp", imapAddr)
	if err != nil {
		t.Fatalf("connecting while broker is down: %v", err)
	}
	defer waiting.Close()
	second := startDaemonCmd(t, brokerBin, env.dir, env.config(listen, "", mailbox), activated("imap", imapFile))
	if second.IMAPAddr != imapAddr {
		t.Fatalf("the second broker listens on %s, want %s", second.IMAPAddr, imapAddr)
	}
	waiting.SetReadDeadline(time.Now().Add(20 * time.Second))
	greeting := make([]byte, 4)
	if _, err := waiting.Read(greeting); err != nil || string(greeting) != "* OK" {
		t.Fatalf("the queued connection got %q, %v; want the greeting", greeting, err)
	}
}
