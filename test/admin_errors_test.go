package test

import (
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/mailbroker/broker/test/m365sim"
)

// Mistakes an administrator makes in Entra or Exchange reach the legacy
// client as a short AUTHENTICATIONFAILED and the log as one sentence naming
// the fix.
func TestAdministratorMistakes(t *testing.T) {
	tests := []struct {
		name    string
		mistake func(*m365sim.App)
		logged  []string
	}{
		{
			name:    "secret ID pasted instead of its value",
			mistake: func(a *m365sim.App) { a.Secret = "a-different-secret-value" },
			logged:  []string{"7000215", "Value"},
		},
		{
			name:    "service principal lacks FullAccess on the mailbox",
			mistake: func(a *m365sim.App) { a.Mailboxes = nil },
			logged:  []string{"FullAccess"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newSimEnv(t, tt.mistake)
			e := loginError(t, env.Daemon.IMAPAddr, mailbox, env.Password)
			if e.Type != imap.StatusResponseTypeNo || e.Code != imap.ResponseCodeAuthenticationFailed {
				t.Fatalf("login: got %+v, want NO [AUTHENTICATIONFAILED]", e)
			}
			if strings.Contains(strings.ToLower(e.Text), "invalid credentials") {
				t.Fatalf("login: got %q, which blames the legacy system's password; the fault is the administrator's", e.Text)
			}
			for _, want := range tt.logged {
				line := env.Daemon.waitLog(want)
				if strings.Contains(line, env.Secret) || strings.Contains(line, env.Password) {
					t.Fatalf("log line leaks a secret: %s", line)
				}
			}
		})
	}
}
