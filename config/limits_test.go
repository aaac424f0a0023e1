package config

import (
	"testing"
	"time"
)

func TestLimitsDefaults(t *testing.T) {
	cfg := mustParse(t, t.TempDir(), "[imap]\n")
	want := Limits{MaxConnections: 1000, MaxConnectionsPerSource: 100, PreAuthTimeout: 60 * time.Second, DrainTimeout: 30 * time.Second}
	if cfg.Limits != want {
		t.Fatalf("got %+v, want %+v", cfg.Limits, want)
	}
	if i := cfg.IMAP; i.MaxConnectionsPerMailbox != 20 || i.ConnectionWait != 30*time.Second {
		t.Fatalf("got IMAP %+v, want 20 sessions per mailbox and a 30s wait", i)
	}
}

func TestLimitsSettings(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want Limits
	}{
		{"empty section", "[limits]\n", Limits{1000, 100, time.Minute, 30 * time.Second}},
		{"all set", "[limits]\nmax_connections = 50\nmax_connections_per_source = 50\npre_auth_timeout = \"1s\"\ndrain_timeout = \"2m\"\n", Limits{50, 50, time.Second, 2 * time.Minute}},
		{"per source follows a lower total", "[limits]\nmax_connections = 10\n", Limits{10, 10, time.Minute, 30 * time.Second}},
		{"longest pre-auth", "[limits]\npre_auth_timeout = \"10m\"\n", Limits{1000, 100, 10 * time.Minute, 30 * time.Second}},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustParse(t, dir, tt.src).Limits; got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestIMAPMailboxSettings(t *testing.T) {
	cfg := mustParse(t, t.TempDir(), "[imap]\nmax_connections_per_mailbox = 5\nconnection_wait = \"2s\"\n")
	if i := cfg.IMAP; i.MaxConnectionsPerMailbox != 5 || i.ConnectionWait != 2*time.Second {
		t.Fatalf("got IMAP %+v, want 5 and 2s", i)
	}
}

func TestWarmConnections(t *testing.T) {
	cfg := mustParse(t, t.TempDir(), "[imap]\n[pop3]\n")
	if cfg.IMAP.WarmConnections != DefaultWarmConnections || cfg.POP3.WarmConnections != DefaultWarmConnections {
		t.Fatalf("warm connections %d and %d, want the default %d", cfg.IMAP.WarmConnections, cfg.POP3.WarmConnections, DefaultWarmConnections)
	}
	cfg = mustParse(t, t.TempDir(), "[imap]\nwarm_connections = 0\n[pop3]\nwarm_connections = 16\n")
	if cfg.IMAP.WarmConnections != 0 || cfg.POP3.WarmConnections != 16 {
		t.Fatalf("warm connections %d and %d, want 0 and 16", cfg.IMAP.WarmConnections, cfg.POP3.WarmConnections)
	}
}
