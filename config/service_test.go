package config

import (
	"errors"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

func TestLogLevel(t *testing.T) {
	for src, want := range map[string]slog.Level{
		"":                      slog.LevelInfo,
		"log_level = \"debug\"": slog.LevelDebug,
		"log_level = \"info\"":  slog.LevelInfo,
		"log_level = \"WARN\"":  slog.LevelWarn,
		"log_level = \"error\"": slog.LevelError,
	} {
		if got := mustParse(t, t.TempDir(), src).LogLevel; got != want {
			t.Errorf("%q: got %v, want %v", src, got, want)
		}
	}
	for _, src := range []string{"\nlog_level = \"verbose\" #<\n", "\nlog_level = 2 #<\n", "\nlog_level = \"\" #<\n"} {
		_, err := parseIn(t, t.TempDir(), src)
		if err == nil || !strings.Contains(err.Error(), ":2: log_level: ") {
			t.Errorf("%q: got %v, want an error naming log_level on line 2", src, err)
		}
	}
}

func TestControlSocket(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ src, want string }{
		// The packaged layout: the runtime directory.
		{"", DefaultControlSocket},
		{"state_dir = \"/var/lib/broker/\"", DefaultControlSocket},
		// Any other state_dir: next to the database, as before.
		{"state_dir = \"/srv/broker\"", "/srv/broker/control.sock"},
		{"state_dir = \"state\"", filepath.Join(dir, "state", "control.sock")},
		// Set: as given, relative to the file's directory.
		{"control_socket = \"/run/broker-a/control.sock\"", "/run/broker-a/control.sock"},
		{"state_dir = \"/srv/broker\"\ncontrol_socket = \"ctl.sock\"", filepath.Join(dir, "ctl.sock")},
	}
	for _, tt := range tests {
		if got := mustParse(t, dir, tt.src).ControlSocket; got != tt.want {
			t.Errorf("%q: got %q, want %q", tt.src, got, tt.want)
		}
	}
	_, err := parseIn(t, dir, "control_socket = \"/"+strings.Repeat("x", 120)+"\"")
	if err == nil || !strings.Contains(err.Error(), "control_socket: ") {
		t.Errorf("a socket path too long: got %v, want an error", err)
	}
}

func TestLoadMissingFileIsConfigError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.toml")
	_, err := Load(path)
	var ce *Error
	if !errors.As(err, &ce) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("got %#v, want an *Error wrapping fs.ErrNotExist", err)
	}
	if want := path + ": no such file or directory"; err.Error() != want {
		t.Fatalf("got %q, want %q", err, want)
	}
}
