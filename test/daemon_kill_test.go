package test

import (
	"strings"
	"time"
)

// kill ends the daemon with SIGKILL, as a crash or the OOM killer would:
// nothing of it runs after the signal, no deferred write, no shutdown.
func (d *daemon) kill() {
	d.t.Helper()
	select {
	case <-d.exited:
		d.t.Fatalf("broker exited before it was killed: %v\n%s", d.err, d.Log())
	default:
	}
	if err := d.cmd.Process.Kill(); err != nil {
		d.t.Fatalf("kill -9 broker: %v", err)
	}
	select {
	case <-d.exited:
	case <-time.After(daemonStartTimeout):
		d.t.Fatalf("broker did not exit on SIGKILL within %v", daemonStartTimeout)
	}
}

// countLog counts the daemon's log lines containing substr.
func (d *daemon) countLog(substr string) int {
	n := 0
	for _, line := range strings.Split(d.Log(), "\n") {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// waitLogCount waits until the daemon has logged n lines containing
// substr, and returns the last of them.
func (d *daemon) waitLogCount(substr string, n int) string {
	d.t.Helper()
	return d.waitLogCountUnless(substr, n, "")
}

// waitLogCountUnless is waitLogCount, failing at once when the daemon logs
// a line containing failure instead ("" for none).
func (d *daemon) waitLogCountUnless(substr string, n int, failure string) string {
	d.t.Helper()
	timeout := time.After(loginWait)
	for {
		d.mu.Lock()
		log, logged := d.stderr.String(), d.logged
		d.mu.Unlock()
		var last string
		count := 0
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, substr) {
				count++
				last = line
			}
			if failure != "" && strings.Contains(line, failure) {
				d.t.Fatalf("broker logged %q while %d lines with %q were awaited\n%s", line, n, substr, log)
			}
		}
		if count >= n {
			return last
		}
		select {
		case <-logged:
		case <-d.exited:
			d.t.Fatalf("broker exited before logging %q %d times\n%s", substr, n, log)
		case <-timeout:
			d.t.Fatalf("broker did not log %q %d times within %v\n%s", substr, n, loginWait, log)
		}
	}
}
