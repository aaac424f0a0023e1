package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/store"
)

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	_, missing := config.Load(filepath.Join(dir, "none.toml"))
	_, invalid := config.Parse([]byte("log_level = \"loud\"\n"), "broker.toml")

	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, inUse := net.Listen("tcp", held.Addr().String())
	_, badAddr := net.Listen("tcp", "127.0.0.1:99999")

	db, err := store.Open(filepath.Join(dir, "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, locked := store.Open(filepath.Join(dir, "broker.db"))

	tests := []struct {
		name string
		err  error
		want int
	}{
		{"config file missing", missing, exitConfig},
		{"config invalid", invalid, exitConfig},
		{"key unreadable", &configError{fmt.Errorf("sealing key: %w", os.ErrPermission)}, exitConfig},
		{"listen address bad", fmt.Errorf("imap.listen: %w", badAddr), exitConfig},
		{"listen address in use", fmt.Errorf("imap.listen: %w", inUse), exitTempFail},
		{"database locked", locked, exitTempFail},
		{"another daemon", fmt.Errorf("control socket x: %w", errDaemonRunning), exitTempFail},
		{"permission", fmt.Errorf("store: %w", os.ErrPermission), exitConfig},
		{"other", errors.New("upstream said no"), exitFailure},
	}
	for _, tt := range tests {
		if tt.err == nil {
			t.Fatalf("%s: no error to classify", tt.name)
		}
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("%s (%v): exit %d, want %d", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestServeConfigErrorExits78(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"serve", "-config", filepath.Join(t.TempDir(), "missing.toml")}, &stdout, &stderr)
	if code != exitConfig {
		t.Fatalf("got exit %d, want %d; stderr %q", code, exitConfig, stderr.String())
	}
}
