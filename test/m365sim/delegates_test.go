package m365sim

import (
	"errors"
	"testing"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

const shared = "support@contoso.onmicrosoft.com"

// A delegate opens a shared mailbox with XOAUTH2 user=shared and the
// delegate's own token, over IMAP and SMTP; other users cannot.
func TestDelegates(t *testing.T) {
	f := newFixture(t)
	if err := f.e.AddDelegate(domain, "Support@contoso.onmicrosoft.com", "ALICE@contoso.onmicrosoft.com"); err != nil {
		t.Fatalf("AddDelegate: %v", err)
	}
	if err := f.e.AddDelegate(domain, shared, "carol@contoso.onmicrosoft.com"); err == nil {
		t.Fatalf("AddDelegate of an unknown user: got nil, want an error")
	}
	aliceTok := f.token(t, domain, ropc(alice, alicePass, userScope)).AccessToken
	bobTok := f.token(t, domain, ropc(bob, "bob's password", userScope)).AccessToken
	ac, err := f.e.ValidateToken(aliceTok)
	if err != nil {
		t.Fatalf("ValidateToken: %v", err)
	}
	bc, err := f.e.ValidateToken(bobTok)
	if err != nil {
		t.Fatalf("ValidateToken: %v", err)
	}
	if err := f.e.MayAccess(ac, shared, "IMAP.AccessAsUser.All"); err != nil {
		t.Fatalf("MayAccess of a delegate: %v", err)
	}
	if err := f.e.MayAccess(bc, shared, "IMAP.AccessAsUser.All"); !errors.Is(err, ErrNoMailboxAccess) {
		t.Fatalf("MayAccess of another user: got %v, want ErrNoMailboxAccess", err)
	}
	// Delegation goes one way.
	if err := f.e.MayAccess(ac, bob, "IMAP.AccessAsUser.All"); !errors.Is(err, ErrNoMailboxAccess) {
		t.Fatalf("MayAccess to bob's mailbox: got %v, want ErrNoMailboxAccess", err)
	}

	s := newIMAP(t, f.e)
	if err := s.AddMailbox(shared); err != nil {
		t.Fatalf("AddMailbox: %v", err)
	}
	c := login(t, s, shared, aliceTok)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	checkAuthFailed(t, s, dialIMAP(t, s, nil), shared, bobTok, ErrNoMailboxAccess)

	sm := newSMTP(t, f.e, SMTPOptions{})
	sc := smtpLogin(t, sm, shared, aliceTok)
	if _, err := send(sc, shared, []string{bob}, testMessage("from the shared mailbox", 0)); err != nil {
		t.Fatalf("send as the shared mailbox: %v", err)
	}
	if msgs := sm.Messages(); len(msgs) != 1 || msgs[0].Mailbox != shared {
		t.Fatalf("Messages: got %+v, want one of mailbox %s", msgs, shared)
	}
	if err := dialSMTP(t, sm).Auth(xoauth2.NewClient(shared, bobTok)); err == nil {
		t.Fatalf("SMTP AUTH as the shared mailbox with bob's token: got nil, want a refusal")
	}
}
