package harness

import (
	"github.com/mailbroker/broker/proxy/xoauth2"

	"strings"
	"testing"
)

// A delegate's token opens the shared mailbox with user=<shared>; other
// users' tokens do not, and the delegate gains nothing else.
func TestDovecotDelegates(t *testing.T) {
	t.Parallel()
	s := newSigner(t, testKID)
	dv := StartDovecot(t, DovecotOptions{
		KeyID:        testKID,
		PublicKeyPEM: s.publicKeyPEM(t),
		Issuers:      []string{testIssuer},
		Audience:     testAudience,
		Mailboxes:    []string{testMailbox, "sales@contoso.com"},
		Delegates:    map[string][]string{"Support@contoso.com": {"Alice@Contoso.com", "bob@contoso.com"}},
	})
	cases := []struct {
		name, user, token, want string
	}{
		{"delegate", testMailbox, s.sign(t, userClaims("alice@contoso.com")), "a OK "},
		{"delegate with idtyp", testMailbox, s.sign(t, with(userClaims("ALICE@contoso.com"), "idtyp", "user")), "a OK "},
		{"second delegate", testMailbox, s.sign(t, userClaims("bob@contoso.com")), "a OK "},
		{"the mailbox's own token", testMailbox, s.sign(t, userClaims(testMailbox)), "a OK "},
		{"not a delegate", testMailbox, s.sign(t, userClaims("carol@contoso.com")), "a NO [AUTHENTICATIONFAILED]"},
		{"delegate of another mailbox", "sales@contoso.com", s.sign(t, userClaims("alice@contoso.com")), "a NO [AUTHENTICATIONFAILED]"},
		{"delegate as itself, no mailbox", "alice@contoso.com", s.sign(t, userClaims("alice@contoso.com")), "a NO [AUTHENTICATIONFAILED]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawAuthenticate(t, dv, tc.user, tc.token); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("got %q, want %s...\n%s", got, tc.want, dv.LogTail())
			}
		})
	}
}

func TestMailboxFilesDelegates(t *testing.T) {
	access, _, err := mailboxFiles("/d", 1, 1, []string{"shared@contoso.com"}, map[string][]string{"Shared@contoso.com": {"Alice@contoso.com"}})
	if err != nil {
		t.Fatalf("mailboxFiles: %v", err)
	}
	for _, want := range []string{"\n/alice@contoso.com/shared@contoso.com:\n", "\nuser/alice@contoso.com/shared@contoso.com:\n"} {
		if !strings.Contains(string(access), want) {
			t.Fatalf("access file\n%s\nlacks %q", access, want)
		}
	}
	bad := []map[string][]string{
		{"nobody@contoso.com": {"alice@contoso.com"}},
		{"shared@contoso.com": {"alice"}},
		{"shared@contoso.com": {"a:b@contoso.com"}},
	}
	for _, d := range bad {
		if _, _, err := mailboxFiles("/d", 1, 1, []string{"shared@contoso.com"}, d); err == nil {
			t.Fatalf("Delegates %v: got nil, want an error", d)
		}
	}
}

// Over Postfix a delegate logs in as the shared mailbox (the SASL login is
// the XOAUTH2 user), so it sends as the shared mailbox and not as itself.
func TestPostfixDelegates(t *testing.T) {
	t.Parallel()
	s := newSigner(t, testKID)
	dv := StartDovecot(t, DovecotOptions{
		KeyID:        testKID,
		PublicKeyPEM: s.publicKeyPEM(t),
		Issuers:      []string{testIssuer},
		Audience:     testAudience,
		Mailboxes:    []string{testMailbox, "sales@contoso.com", "alice@contoso.com"},
		Delegates:    map[string][]string{testMailbox: {"alice@contoso.com"}},
	})
	f := &postfixFixture{fixture: &fixture{dv: dv, signer: s}, pf: StartPostfix(t, PostfixOptions{Dovecot: dv})}
	w := f.watchInbox(t, "sales@contoso.com")
	aliceToken := s.sign(t, userClaims("alice@contoso.com"))

	c := f.submit(t)
	if err := c.Auth(xoauth2.NewClient(testMailbox, aliceToken)); err != nil {
		t.Fatalf("AUTH XOAUTH2 as %s with a delegate's token: %v\n%s", testMailbox, err, f.logs())
	}
	if err := c.Mail("alice@contoso.com", nil); err != nil {
		t.Fatalf("MAIL FROM: %v", err)
	}
	if code, _ := smtpCode(c.Rcpt("sales@contoso.com", nil)); code != 553 {
		t.Fatalf("RCPT TO after MAIL FROM the delegate's own address: got %d, want 553\n%s", code, f.logs())
	}
	if err := c.Reset(); err != nil {
		t.Fatalf("RSET: %v", err)
	}
	if err := c.SendMail(testMailbox, []string{"sales@contoso.com"}, strings.NewReader(testMessage)); err != nil {
		t.Fatalf("sending as the shared mailbox: %v\n%s", err, f.logs())
	}
	if got := w.wait(t, f); !strings.Contains(string(got), "Return-Path: <"+testMailbox+">") {
		t.Fatalf("delivered message lacks Return-Path <%s>:\n%s", testMailbox, got)
	}

	c = f.submit(t)
	err := c.Auth(xoauth2.NewClient(testMailbox, s.sign(t, userClaims("sales@contoso.com"))))
	if code, _ := smtpCode(err); code != 535 {
		t.Fatalf("AUTH as %s with a non-delegate's token: got %v, want 535\n%s", testMailbox, err, f.logs())
	}
}
