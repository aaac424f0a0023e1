package config

import (
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestSMTPDefaults(t *testing.T) {
	cfg := mustParse(t, t.TempDir(), "[smtp]\n")
	if cfg.IMAP != nil {
		t.Fatalf("got IMAP %+v, want nil without [imap]", cfg.IMAP)
	}
	s := cfg.SMTP
	if s == nil {
		t.Fatal("got no SMTP for [smtp]")
	}
	if !slices.Equal(s.Listen, []string{"127.0.0.1:587"}) || len(s.ListenTLS) != 0 || s.Upstream != "smtp.office365.com:587" ||
		s.UpstreamImplicitTLS || s.UpstreamCAFile != "" || s.TLSCertFile != "" || s.TLSKeyFile != "" {
		t.Fatalf("got %+v, want the defaults", s)
	}
	if s.UnauthenticatedAs != "" || s.MaxConnectionsPerMailbox != 3 || s.ConnectionWait != 30*time.Second || s.ReuseIdleTimeout != 30*time.Second {
		t.Fatalf("got %+v, want AUTH required, 3 connections, 30s wait, reuse for 30s", s)
	}
	if len(cfg.Warnings) != 0 {
		t.Fatalf("got warnings %q, want none", cfg.Warnings)
	}
}

func TestEmptyFileHasNoSMTP(t *testing.T) {
	if cfg := mustParse(t, t.TempDir(), "[imap]\n"); cfg.SMTP != nil {
		t.Fatalf("got SMTP %+v, want nil", cfg.SMTP)
	}
}

func TestSMTPSettings(t *testing.T) {
	accounts := contosoApp + supportAccount +
		"[[account]]\nmailbox = \"Scanner@Contoso.com\"\nlogin = \"Scan1\"\napp = \"contoso\"\nflow = \"client_credentials\"\n"
	tests := []struct {
		name string
		src  string // after the accounts
		want SMTP
	}{
		{"implicit TLS upstream", "upstream = \"smtp.example.com:465\"\n",
			SMTP{Listener: Listener{Upstream: "smtp.example.com:465"}, UpstreamImplicitTLS: true}},
		{"STARTTLS upstream", "upstream = \"smtp.example.com:25\"\n",
			SMTP{Listener: Listener{Upstream: "smtp.example.com:25"}}},
		{"unauthenticated as mailbox", "allow_unauthenticated_as = \"SUPPORT@contoso.com\"\n",
			SMTP{UnauthenticatedAs: "support@contoso.com"}},
		{"unauthenticated as login", "allow_unauthenticated_as = \"scan1\"\n",
			SMTP{UnauthenticatedAs: "scanner@contoso.com"}},
		{"unauthenticated as mailbox with a login", "allow_unauthenticated_as = \"scanner@contoso.com\"\n",
			SMTP{UnauthenticatedAs: "scanner@contoso.com"}},
		{"one connection", "max_connections_per_mailbox = 1\n", SMTP{MaxConnectionsPerMailbox: 1}},
		{"most connections", "max_connections_per_mailbox = 100\n", SMTP{MaxConnectionsPerMailbox: 100}},
		{"short wait", "connection_wait = \"1ms\"\n", SMTP{ConnectionWait: time.Millisecond}},
		{"longest wait", "connection_wait = \"10m\"\n", SMTP{ConnectionWait: 10 * time.Minute}},
		{"wait in minutes and seconds", "connection_wait = \"1m30s\"\n", SMTP{ConnectionWait: 90 * time.Second}},
		{"no reuse", "reuse_idle_timeout = \"0s\"\n", SMTP{ReuseIdleTimeout: -1}},
		{"longest reuse", "reuse_idle_timeout = \"5m\"\n", SMTP{ReuseIdleTimeout: 5 * time.Minute}},
	}
	dir := fixture(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustParse(t, dir, accounts+"[smtp]\n"+tt.src).SMTP
			want := tt.want
			if want.Upstream == "" {
				want.Upstream = "smtp.office365.com:587"
			}
			if want.MaxConnectionsPerMailbox == 0 {
				want.MaxConnectionsPerMailbox = DefaultSMTPMaxConnectionsPerMailbox
			}
			if want.ConnectionWait == 0 {
				want.ConnectionWait = DefaultSMTPConnectionWait
			}
			switch want.ReuseIdleTimeout {
			case 0:
				want.ReuseIdleTimeout = DefaultSMTPReuseIdleTimeout
			case -1:
				want.ReuseIdleTimeout = 0
			}
			if got.Upstream != want.Upstream || got.UpstreamImplicitTLS != want.UpstreamImplicitTLS ||
				got.UnauthenticatedAs != want.UnauthenticatedAs || got.MaxConnectionsPerMailbox != want.MaxConnectionsPerMailbox ||
				got.ConnectionWait != want.ConnectionWait || got.ReuseIdleTimeout != want.ReuseIdleTimeout {
				t.Fatalf("got %+v, want %+v", *got, want)
			}
		})
	}
}

func TestSMTPUpstreamFollowsCloud(t *testing.T) {
	tests := []struct{ cloud, want string }{
		{"global", "smtp.office365.com:587"},
		{"usgovhigh", "smtp.office365.us:587"},
		{"usgovdod", "outlook-dod.office365.us:587"},
		{"china", "smtp.partner.outlook.cn:587"},
	}
	dir := fixture(t)
	for _, tt := range tests {
		cfg := mustParse(t, dir, "[smtp]\n"+contosoApp+"cloud = \""+tt.cloud+"\"\n")
		if cfg.SMTP.Upstream != tt.want || cfg.SMTP.UpstreamImplicitTLS {
			t.Fatalf("cloud %s: got upstream %q (implicit TLS %v), want %q with STARTTLS", tt.cloud, cfg.SMTP.Upstream, cfg.SMTP.UpstreamImplicitTLS, tt.want)
		}
	}
}

func TestSMTPBesideIMAP(t *testing.T) {
	dir := fixture(t)
	src := `[imap]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:1993"]
tls_cert_file = "cert.pem"
tls_key_file = "key.pem"
[smtp]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:1465"]
tls_cert_file = "cert.pem"
tls_key_file = "key.pem"
upstream_ca_file = "ca.pem"
`
	cfg := mustParse(t, dir, src)
	s := cfg.SMTP
	if !slices.Equal(s.Listen, []string{"127.0.0.1:0"}) || !slices.Equal(s.ListenTLS, []string{"127.0.0.1:1465"}) {
		t.Fatalf("got listen %v, listen_tls %v", s.Listen, s.ListenTLS)
	}
	if s.TLSCertFile != filepath.Join(dir, "cert.pem") || s.TLSKeyFile != filepath.Join(dir, "key.pem") ||
		s.UpstreamCAFile != filepath.Join(dir, "ca.pem") {
		t.Fatalf("got files %q %q %q", s.TLSCertFile, s.TLSKeyFile, s.UpstreamCAFile)
	}
	if cfg.IMAP == nil || cfg.IMAP.Upstream != "outlook.office365.com:993" {
		t.Fatalf("got IMAP %+v", cfg.IMAP)
	}
}
