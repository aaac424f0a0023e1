package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// waitReady polls greet until it succeeds, the process exits or deadline
// passes. A server in the foreground tells nobody when it has bound its
// ports, so the port is polled.
func waitReady(name string, cmd *exec.Cmd, exited <-chan struct{}, deadline time.Time, greet func(time.Time) error) error {
	start := time.Now()
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("%s exited: %v", name, cmd.ProcessState)
		default:
		}
		if lastErr = greet(deadline); lastErr == nil {
			return nil
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %v: %v", name, deadline.Sub(start).Round(time.Second), lastErr)
}

// logTail returns the end of each named log file in dir, headed by label
// and the file's name, for failure messages.
func logTail(dir, label string, names ...string) string {
	var b strings.Builder
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || len(data) == 0 {
			continue
		}
		const max = 8 << 10
		if len(data) > max {
			data = data[len(data)-max:]
		}
		fmt.Fprintf(&b, "--- %s%s ---\n%s", label, name, data)
	}
	return b.String()
}
