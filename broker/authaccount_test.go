package broker

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// accountLogin authenticates as account without a password and returns
// the upstream account and access token.
func accountLogin(t *testing.T, b *Broker, account string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up, err := b.AuthenticateAccount(ctx, proxy.SMTP, account)
	if err != nil {
		return "", "", err
	}
	_, ir, err := up.SASL.Start()
	if err != nil {
		t.Fatalf("SASL.Start: %v", err)
	}
	u, tok, err := xoauth2.ParseResponse(ir)
	if err != nil || u != up.Account {
		t.Fatalf("XOAUTH2 response for %q: user %q, %v", up.Account, u, err)
	}
	return up.Account, tok, nil
}

func TestAuthenticateAccount(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	tests := []struct {
		name    string
		account string
		want    string // the upstream mailbox; "" for a credentials error
	}{
		{"mailbox", mailboxA, mailboxA},
		{"login", "alice", mailboxA},
		{"login in other case", " ALICE ", mailboxA},
		{"mailbox with a login of its own", "Alice@Contoso.Example", mailboxA},
		{"mailbox that is the login", mailboxB, mailboxB},
		{"unknown", "mallory", ""},
		{"unknown mailbox", "mallory@contoso.example", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			account, tok, err := accountLogin(t, b, tt.account)
			if tt.want == "" {
				le := wantKind(t, err, proxy.KindCredentials)
				if le.Reason != reasonCredentials {
					t.Fatalf("got reason %q, want %q, as for a wrong password", le.Reason, reasonCredentials)
				}
				return
			}
			if err != nil {
				t.Fatalf("got %v, want a login as %s", err, tt.want)
			}
			if account != tt.want || tok == "" {
				t.Fatalf("got account %q token %q, want %q and a token", account, tok, tt.want)
			}
		})
	}
	if n := b.pw.hashes.Load(); n != 0 {
		t.Fatalf("got %d argon2 runs, want none: there is no password to check", n)
	}
	if n := e.entra.count(); n != 2 {
		t.Fatalf("got %d token requests, want 2: one per account, then cached", n)
	}
}

// Without a password in the way, token failures reach the proxy as they do
// for a password login.
func TestAuthenticateAccountTokenFailure(t *testing.T) {
	e := newEnv(t)
	b := e.broker(t)
	e.entra.failWith(http.StatusUnauthorized, aadstsBody(7000215, "invalid_client", "Invalid client secret provided."))
	_, _, err := accountLogin(t, b, "alice")
	if le := wantKind(t, err, proxy.KindAccount); le.Reason != reasonNeedsAdmin {
		t.Fatalf("got reason %q, want %q", le.Reason, reasonNeedsAdmin)
	}
}
