// Package test drives the assembled broker daemon from the outside: the real
// binary, real clients (imapclient, curl, Python's imaplib) and real or
// simulated upstreams.
package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// brokerBin is the broker binary built once for the whole package.
var brokerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "broker-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	brokerBin = filepath.Join(dir, "broker")
	build := exec.Command("go", "build", "-race", "-o", brokerBin, "../cmd/broker")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building broker:", err)
		os.Exit(1)
	}
	// The race runtime pauses a second at every exit, in each daemon and
	// CLI run; a race still fails the test through the exit status (66).
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
