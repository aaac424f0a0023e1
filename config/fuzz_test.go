package config

import (
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(contosoApp + supportAccount))
	f.Add([]byte("[imap]\nlisten = [\"127.0.0.1:143\", \":1993\"]\n"))
	f.Add([]byte("account = [{mailbox = \"a@b.c\", app = \"x\"}]\n[[app]]\nname = 'x'\ncloud = \"china\"\n"))
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
