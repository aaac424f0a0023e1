package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mailbroker/broker/broker"
)

// notifySystemd sends a sd_notify(3) state when run as a Type=notify unit.
// It is a no-op otherwise; failures are not worth stopping for.
func notifySystemd(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}

// statusInterval paces the STATUS= line: it is sent when it changed, at
// most this often, and at once after a reload.
const statusInterval = 2 * time.Second

// statusNotifier keeps systemd's STATUS= line (systemctl status) current.
type statusNotifier struct {
	wake chan struct{}
}

func newStatusNotifier() *statusNotifier { return &statusNotifier{wake: make(chan struct{}, 1)} }

// poke asks for the line to be sent again now.
func (n *statusNotifier) poke() {
	if n == nil {
		return
	}
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// statusLoop sends the status line when it changes, until ctx is done. It
// also forgets the servers a reload replaced once they have no session.
func (d *daemon) statusLoop(ctx context.Context) {
	t := time.NewTicker(statusInterval)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.status.wake:
			last = ""
		}
		d.reapRetired()
		if line := d.statusLine(); line != last {
			notifySystemd("STATUS=" + line)
			last = line
		}
	}
}

// statusLine is one line for systemctl status: sessions per protocol and
// the accounts that serve and those that need an administrator.
func (d *daemon) statusLine() string {
	sessions := map[string]int{}
	total := 0
	d.live.mu.Lock()
	servers := append(d.serversLocked(), d.live.retired...)
	d.live.mu.Unlock()
	var protos []string
	for _, s := range servers {
		if _, ok := sessions[s.proto]; !ok {
			protos = append(protos, s.proto)
		}
		n := s.Sessions()
		sessions[s.proto] += n
		total += n
	}
	var parts []string
	for _, p := range protos {
		parts = append(parts, fmt.Sprintf("%s %d", p, sessions[p]))
	}
	ok, attention, expiring := 0, 0, 0
	for _, st := range d.broker.AccountStatuses() {
		critical, warning := st.Attention()
		switch {
		case critical:
			attention++
		case st.State == broker.StateOK:
			ok++
		}
		if warning {
			expiring++
		}
	}
	line := fmt.Sprintf("%d sessions", total)
	if len(parts) > 0 {
		line += " (" + strings.Join(parts, ", ") + ")"
	}
	line += fmt.Sprintf("; accounts: %d ok, %d need attention", ok, attention)
	if expiring > 0 {
		line += fmt.Sprintf(", %d with a credential expiring", expiring)
	}
	if attention > 0 {
		line += " (broker status)"
	}
	return line
}

// watchdogInterval returns half of WATCHDOG_USEC when systemd asks for
// keep-alive pings of this process (WatchdogSec=), else 0.
func watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// watchdogLoop sends WATCHDOG=1 every interval while the daemon is alive,
// until ctx is done. When a check fails it stays silent, and systemd kills
// and restarts broker once WatchdogSec passes without a ping.
func (d *daemon) watchdogLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := ""
	for {
		if reason := d.notAlive(ctx, interval/2); reason == "" {
			notifySystemd("WATCHDOG=1")
			if failing != "" {
				d.log.Info("watchdog: alive again")
				failing = ""
			}
		} else if reason != failing && ctx.Err() == nil {
			d.log.Error("watchdog: not alive; withholding the keep-alive, systemd will restart broker", "reason", reason)
			failing = reason
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// notAlive says what is stuck or gone, or "" when the accept loops run and
// the token refresher answers within wait.
func (d *daemon) notAlive(ctx context.Context, wait time.Duration) string {
	d.live.mu.Lock()
	bound := append([]*boundListener(nil), d.live.bound...)
	d.live.mu.Unlock()
	for _, bl := range bound {
		if !bl.alive() {
			return "the accept loop of " + bl.desc + " ended"
		}
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if !d.broker.Alive(ctx) {
		return "the token refresher does not answer"
	}
	return ""
}
