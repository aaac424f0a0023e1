package config

import (
	"log/slog"
	"path/filepath"
	"strings"
)

// DefaultControlSocket is the control socket of the packaged layout: in
// the runtime directory systemd makes for the unit (RuntimeDirectory=broker).
const DefaultControlSocket = "/run/broker/control.sock"

// ControlSocketFile is the control socket's name in state_dir when
// state_dir is not the default.
const ControlSocketFile = "control.sock"

// maxSocketPath is the longest path a Unix socket address holds (108
// bytes with the terminating NUL on Linux).
const maxSocketPath = 107

// logLevels are the accepted values of log_level.
var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// ParseLogLevel parses debug, info, warn or error, as log_level and the
// -log-level flag accept them.
func ParseLogLevel(s string) (slog.Level, bool) {
	l, ok := logLevels[strings.ToLower(s)]
	return l, ok
}

// DefaultControlSocketFor is where the control socket is when the file sets
// no control_socket. It depends on the configuration alone, never on the
// environment, so that a daemon started by systemd and a CLI run by root
// from a shell find the same socket: /run/broker/control.sock for the
// default state_dir (the layout of the package and of the unit file, whose
// RuntimeDirectory=broker makes /run/broker), else state_dir/control.sock.
func DefaultControlSocketFor(stateDir string) string {
	if filepath.Clean(stateDir) == DefaultStateDir {
		return DefaultControlSocket
	}
	return filepath.Join(stateDir, ControlSocketFile)
}

func (v *validator) logLevel(t text) slog.Level {
	s, ok := v.str("log_level", t)
	if !ok {
		return slog.LevelInfo
	}
	l, ok := ParseLogLevel(s)
	if !ok {
		v.errorf("log_level", "%q is not a log level: debug, info, warn or error", s)
	}
	return l
}

func (v *validator) controlSocket(t text, stateDir string) string {
	p, ok := v.str("control_socket", t)
	if !ok {
		return DefaultControlSocketFor(stateDir)
	}
	p = v.resolve(p)
	if len(p) > maxSocketPath {
		v.errorf("control_socket", "%s is longer than a Unix socket path may be (%d bytes)", p, maxSocketPath)
	}
	return p
}
