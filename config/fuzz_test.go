package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(contosoApp + supportAccount))
	f.Add([]byte("[imap]\nlisten = [\"127.0.0.1:143\", \":1993\"]\n"))
	f.Add([]byte("account = [{mailbox = \"a@b.c\", app = \"x\"}]\n[[app]]\nname = 'x'\ncloud = \"china\"\n"))
	f.Add([]byte(contosoApp + supportAccount + "[smtp]\nlisten = [\":587\"]\nupstream = \"smtp.example.com:465\"\n" +
		"allow_unauthenticated_as = \"Support@contoso.com\"\nmax_connections_per_mailbox = 2\nconnection_wait = \"1m\"\n"))
	f.Add([]byte("[limits]\nmax_connections = 10\nmax_connections_per_source = 5\npre_auth_timeout = \"30s\"\n" +
		"[imap]\nmax_connections_per_mailbox = 20\nconnection_wait = \"5s\"\n"))
	f.Add([]byte("a = \"\"\"\n[b]\n\"\"\"\n[[c.d]]\ne = [[1], {f = 2}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		scanKeyLines(data)
		cfg, err := Parse(data, "fuzz.toml")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if cfg.IMAP != nil && len(cfg.IMAP.Listen)+len(cfg.IMAP.ListenTLS) == 0 {
			t.Fatal("accepted [imap] without a listener")
		}
		if s := cfg.SMTP; s != nil {
			if len(s.Listen)+len(s.ListenTLS) == 0 {
				t.Fatal("accepted [smtp] without a listener")
			}
			if s.MaxConnectionsPerMailbox < 1 || s.MaxConnectionsPerMailbox > 100 || s.ConnectionWait <= 0 || s.ConnectionWait > 10*time.Minute {
				t.Fatalf("accepted [smtp] with %d connections per mailbox, wait %v", s.MaxConnectionsPerMailbox, s.ConnectionWait)
			}
			if s.ReuseIdleTimeout < 0 || s.ReuseIdleTimeout > 5*time.Minute {
				t.Fatalf("accepted [smtp] with reuse_idle_timeout %v", s.ReuseIdleTimeout)
			}
			if s.UnauthenticatedAs != "" && !slices.ContainsFunc(cfg.Accounts, func(a *Account) bool { return a.Mailbox == s.UnauthenticatedAs }) {
				t.Fatalf("allow_unauthenticated_as %q is no account's mailbox", s.UnauthenticatedAs)
			}
		}
		for _, a := range cfg.Accounts {
			if a.App == nil || cfg.AppByName(a.App.Name) != a.App {
				t.Fatalf("account %q has app %v, not one of the config's", a.Mailbox, a.App)
			}
			if a.Mailbox != strings.ToLower(a.Mailbox) || cfg.AccountByLogin(a.Login) != a {
				t.Fatalf("account %q: login %q does not find it", a.Mailbox, a.Login)
			}
		}
	})
}
