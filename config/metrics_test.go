package config

import (
	"errors"
	"strings"
	"testing"
)

func TestMetricsListen(t *testing.T) {
	dir := t.TempDir()
	if got := mustParse(t, dir, "[imap]\n").Metrics.Listen; got != "" {
		t.Fatalf("no [metrics]: listen %q, want none", got)
	}
	for _, addr := range []string{"127.0.0.1:9143", "[::1]:9143", "localhost:9143", "127.0.0.2:0"} {
		src := "[metrics]\nlisten = \"" + addr + "\"\n"
		if got := mustParse(t, dir, src).Metrics.Listen; got != addr {
			t.Fatalf("listen = %q: got %q", addr, got)
		}
	}
}

func TestMetricsListenErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"all addresses", "[metrics]\nlisten = \":9143\" #<\n", "not a loopback address"},
		{"wildcard", "[metrics]\nlisten = \"0.0.0.0:9143\" #<\n", "not a loopback address"},
		{"other host", "[metrics]\nlisten = \"192.0.2.1:9143\" #<\n", "not a loopback address"},
		{"no port", "[metrics]\nlisten = \"127.0.0.1\" #<\n", "missing port"},
		{"not a string", "[metrics]\nlisten = 9143 #<\n", "must be a string"},
		{"same as imap", "[imap]\nlisten = [\"127.0.0.1:1143\"]\n[metrics]\nlisten = \"127.0.0.1:1143\" #<\n", "already listed as imap.listen[1]"},
		{"unknown key", "[metrics]\npath = \"/metrics\" #<\n", "unknown key"},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseIn(t, dir, tt.src)
			if err == nil {
				t.Fatal("parsed without error")
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.Line != markedLine(t, tt.src) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want %q on line %d", err, tt.want, markedLine(t, tt.src))
			}
		})
	}
}
