package m365sim

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// newIMAP starts an IMAP service for f's Entra with mailboxes for alice and
// bob.
func newIMAP(t *testing.T, e *Entra) *IMAP {
	t.Helper()
	s, err := NewIMAP(e)
	if err != nil {
		t.Fatalf("NewIMAP: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	for _, m := range []string{alice, bob} {
		if err := s.AddMailbox(m); err != nil {
			t.Fatalf("AddMailbox(%s): %v", m, err)
		}
	}
	return s
}

func dialIMAP(t *testing.T, s *IMAP, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatalf("CACertPEM: no certificate")
	}
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = &tls.Config{RootCAs: pool}
	c, err := imapclient.DialTLS(s.Addr(), opts)
	if err != nil {
		t.Fatalf("DialTLS: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// login dials and authenticates with XOAUTH2.
func login(t *testing.T, s *IMAP, mailbox, token string) *imapclient.Client {
	t.Helper()
	c := dialIMAP(t, s, nil)
	if err := c.Authenticate(xoauth2.NewClient(mailbox, token)); err != nil {
		t.Fatalf("Authenticate(%s): %v", mailbox, err)
	}
	return c
}

func TestIMAPLoginListFetch(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	c := dialIMAP(t, s, nil)
	if err := c.WaitGreeting(); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	pre := c.Caps()
	for _, want := range []imap.Cap{imap.CapIMAP4rev1, imap.CapSASLIR, "AUTH=XOAUTH2"} {
		if !pre.Has(want) {
			t.Fatalf("capabilities before login %v lack %s", pre, want)
		}
	}
	for _, unwanted := range []imap.Cap{imap.CapIMAP4rev2, "AUTH=PLAIN", imap.CapLoginDisabled, imap.CapStartTLS} {
		if pre.Has(unwanted) {
			t.Fatalf("capabilities before login %v have %s", pre, unwanted)
		}
	}
	if err := c.Authenticate(xoauth2.NewClient(alice, appAccessToken(t, f))); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	post := c.Caps()
	for _, want := range []imap.Cap{imap.CapIdle, imap.CapUIDPlus, imap.CapMove, imap.CapNamespace, imap.CapUnselect, imap.CapLiteralPlus} {
		if !post.Has(want) {
			t.Fatalf("capabilities after login %v lack %s", post, want)
		}
	}

	boxes, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatalf("LIST: %v", err)
	}
	var names []string
	for _, b := range boxes {
		names = append(names, b.Mailbox)
	}
	slices.Sort(names)
	if want := slices.Sorted(slices.Values(exchangeFolders)); !slices.Equal(names, want) {
		t.Fatalf("LIST: got %q, want %q", names, want)
	}

	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if sel.NumMessages != uint32(len(seedMessages)) {
		t.Fatalf("SELECT INBOX: got %d messages, want %d", sel.NumMessages, len(seedMessages))
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3), &imap.FetchOptions{Envelope: true, Flags: true}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	for i, m := range msgs {
		want := seedMessages[i]
		env := m.Envelope
		if env.Subject != want.subject || !env.Date.Equal(want.date) || env.MessageID == "" ||
			len(env.From) != 1 || len(env.To) != 1 || env.To[0].Addr() != alice {
			t.Fatalf("message %d: got %+v, want subject %q date %v to %s", i+1, env, want.subject, want.date, alice)
		}
		if got := slices.Contains(m.Flags, imap.FlagSeen); got != want.seen {
			t.Fatalf("message %d: seen %v, want %v", i+1, got, want.seen)
		}
	}
	if s.Logins() != 1 || s.Sessions() != 1 {
		t.Fatalf("got %d logins, %d sessions; want 1, 1", s.Logins(), s.Sessions())
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}
	if err := s.WaitSessions(context.Background(), 0); err != nil {
		t.Fatalf("WaitSessions: %v", err)
	}
}

func TestIMAPUserToken(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	tok := f.token(t, domain, ropc(alice, alicePass, userScope)).AccessToken
	c := login(t, s, "ALICE@contoso.onmicrosoft.com", tok)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
}

func TestIMAPAuthenticateFailures(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	// An app with the IMAP role but no FullAccess to any mailbox, and one
	// with FullAccess but no IMAP role.
	const ungranted, noRole = "a0000000-0000-4000-8000-000000000001", "a0000000-0000-4000-8000-000000000002"
	f.e.AddApp(App{Tenant: domain, ClientID: ungranted, Secret: secret, Roles: []string{"IMAP.AccessAsApp"}})
	f.e.AddApp(App{Tenant: domain, ClientID: noRole, Secret: secret, Roles: []string{"SMTP.SendAsApp"}, Mailboxes: []string{alice}})
	appToken := func(clientID, scope string) string {
		t.Helper()
		return f.token(t, domain, form("grant_type", "client_credentials", "client_id", clientID, "client_secret", secret, "scope", scope)).AccessToken
	}
	good := appAccessToken(t, f)
	userTok := f.token(t, domain, ropc(bob, "bob's password", userScope)).AccessToken
	smtpOnly := f.token(t, domain, ropc(alice, alicePass, "https://outlook.office.com/SMTP.Send")).AccessToken
	graphTok := appToken(confID, "https://graph.microsoft.com/.default")
	if err := s.AddMailbox("shared@contoso.onmicrosoft.com"); err != nil {
		t.Fatalf("AddMailbox: %v", err)
	}
	f.e.AddApp(App{Tenant: domain, ClientID: confID, Secret: secret, Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{alice, "carol@contoso.onmicrosoft.com"}})

	tests := []struct {
		name    string
		mailbox string
		token   string
		want    error
	}{
		{"garbage token", alice, "not-a-jwt", ErrTokenMalformed},
		{"forged signature", alice, good[:len(good)-4] + "AAAA", ErrTokenSignature},
		{"app without mailbox grant", alice, appToken(ungranted, outlookDef), ErrNoMailboxAccess},
		{"app without IMAP role", alice, appToken(noRole, outlookDef), ErrTokenNoPermission},
		{"granted app, other mailbox", "shared@contoso.onmicrosoft.com", good, ErrNoMailboxAccess},
		{"grant for a mailbox IMAP lacks", "carol@contoso.onmicrosoft.com", good, ErrUnknownMailbox},
		{"user token, other mailbox", alice, userTok, ErrNoMailboxAccess},
		{"user token without IMAP scope", alice, smtpOnly, ErrTokenNoPermission},
		{"graph audience", alice, graphTok, ErrTokenAudience},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialIMAP(t, s, nil)
			checkAuthFailed(t, s, c, tt.mailbox, tt.token, tt.want)
		})
	}

	t.Run("expired token", func(t *testing.T) {
		c := dialIMAP(t, s, nil)
		f.clock.Add(DefaultTokenLifetime)
		defer f.clock.Add(-DefaultTokenLifetime)
		checkAuthFailed(t, s, c, alice, good, ErrTokenExpired)
		// Exchange lets the client try again on the same connection.
		if err := c.Authenticate(xoauth2.NewClient(alice, appAccessToken(t, f))); err != nil {
			t.Fatalf("retry with a fresh token: %v", err)
		}
	})
	if got := s.Logins(); got != 1 {
		t.Fatalf("Logins: got %d, want 1", got)
	}
}

// checkAuthFailed logs in and expects Exchange's failure: the error
// challenge, then NO AUTHENTICATE failed.
func checkAuthFailed(t *testing.T, s *IMAP, c *imapclient.Client, mailbox, token string, want error) {
	t.Helper()
	sc := xoauth2.NewClient(mailbox, token)
	err := c.Authenticate(sc)
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo || imapErr.Text != "AUTHENTICATE failed." || imapErr.Code != "" {
		t.Fatalf("Authenticate: got %v, want NO AUTHENTICATE failed.", err)
	}
	if got := string(sc.Challenge()); got != xoauth2.DefaultErrorChallenge {
		t.Fatalf("challenge: got %q, want %q", got, xoauth2.DefaultErrorChallenge)
	}
	if got := s.LastAuthError(); !errors.Is(got, want) {
		t.Fatalf("reason: got %v, want %v", got, want)
	}
}

func TestIMAPBasicAuthRefused(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	c := dialIMAP(t, s, nil)
	err := c.Login(alice, alicePass).Wait()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo || imapErr.Text != "LOGIN failed." {
		t.Fatalf("LOGIN: got %v, want NO LOGIN failed.", err)
	}
	err = c.Authenticate(sasl.NewPlainClient("", alice, alicePass))
	if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo || imapErr.Text != "AUTHENTICATE failed." {
		t.Fatalf("AUTHENTICATE PLAIN: got %v, want NO AUTHENTICATE failed.", err)
	}
	if s.Logins() != 0 {
		t.Fatalf("Logins: got %d, want 0", s.Logins())
	}
}

func TestIMAPSharedMailboxState(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	tok := appAccessToken(t, f)

	exists := make(chan uint32, 16)
	idler := dialIMAP(t, s, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
	}})
	if err := idler.Authenticate(xoauth2.NewClient(alice, tok)); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	if _, err := idler.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	idle, err := idler.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}

	writer := login(t, s, alice, tok)
	msg := []byte("From: <bob@contoso.onmicrosoft.com>\r\nTo: <alice@contoso.onmicrosoft.com>\r\nSubject: appended\r\n\r\nhello\r\n")
	app := writer.Append("INBOX", int64(len(msg)), nil)
	app.Write(msg)
	if err := app.Close(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	if _, err := app.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	if got := <-exists; got != 4 {
		t.Fatalf("EXISTS during IDLE after APPEND: got %d, want 4", got)
	}
	if err := s.Deliver(alice, msg); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if got := <-exists; got != 5 {
		t.Fatalf("EXISTS during IDLE after Deliver: got %d, want 5", got)
	}
	if err := idle.Close(); err != nil {
		t.Fatalf("DONE: %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}

	// Another mailbox is not affected.
	other := login(t, s, bob, appAccessTokenFor(t, f, bob))
	st, err := other.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 3 {
		t.Fatalf("bob's INBOX: got %v, %v; want 3 messages", st, err)
	}
	if err := s.Deliver("nobody@contoso.onmicrosoft.com", msg); !errors.Is(err, ErrUnknownMailbox) {
		t.Fatalf("Deliver to unknown mailbox: got %v, want ErrUnknownMailbox", err)
	}
}

// appAccessTokenFor grants the confidential app FullAccess to mailbox too.
func appAccessTokenFor(t *testing.T, f *fixture, mailbox string) string {
	t.Helper()
	f.e.AddApp(App{Tenant: domain, ClientID: confID, Secret: secret, Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{alice, mailbox}})
	return appAccessToken(t, f)
}

func TestIMAPLargeMessage(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\r\n"), 10<<20/66)
	msg := append([]byte("From: <bob@contoso.onmicrosoft.com>\r\nSubject: big\r\n\r\n"), body...)
	if err := s.Deliver(alice, msg); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	c := login(t, s, alice, appAccessToken(t, f))
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(4), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, msg) {
		t.Fatalf("FETCH BODY[]: got %d bytes, want the %d delivered", len(got), len(msg))
	}
}

func TestIMAPConcurrentSessions(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	tok := appAccessToken(t, f)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- oneSession(s, tok, i)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Logins(); got != n {
		t.Fatalf("Logins: got %d, want %d", got, n)
	}
	if err := s.WaitSessions(context.Background(), 0); err != nil {
		t.Fatalf("WaitSessions: %v", err)
	}
}

// oneSession logs in, appends a message and logs out. It reports instead of
// calling t.Fatal, being run off the test goroutine.
func oneSession(s *IMAP, tok string, i int) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CACertPEM())
	c, err := imapclient.DialTLS(s.Addr(), &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool}})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Authenticate(xoauth2.NewClient(alice, tok)); err != nil {
		return fmt.Errorf("session %d: Authenticate: %v", i, err)
	}
	msg := fmt.Appendf(nil, "Subject: %d\r\n\r\nbody\r\n", i)
	app := c.Append("Drafts", int64(len(msg)), nil)
	app.Write(msg)
	app.Close()
	if _, err := app.Wait(); err != nil {
		return fmt.Errorf("session %d: APPEND: %v", i, err)
	}
	return c.Logout().Wait()
}

// TestIMAPTokenExpiry waits for a real 3 s token to run out: Exchange then
// ends the session.
func TestIMAPTokenExpiry(t *testing.T) {
	t.Parallel()
	e, err := NewEntra(EntraOptions{TokenLifetime: 3 * time.Second})
	if err != nil {
		t.Fatalf("NewEntra: %v", err)
	}
	defer e.Close()
	e.AddApp(App{Tenant: domain, ClientID: confID, Secret: secret, Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{alice}})
	s := newIMAP(t, e)
	f := &fixture{e: e}
	var log syncBuffer
	c := dialIMAP(t, s, &imapclient.Options{DebugWriter: &log})
	if err := c.Authenticate(xoauth2.NewClient(alice, appAccessToken(t, f))); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	select {
	case <-c.Closed():
	case <-ctx.Done():
		t.Fatalf("session still open 30 s after a 3 s token")
	}
	if want := "* BYE Session invalidated - AccessTokenExpired\r\n"; !bytes.Contains(log.Bytes(), []byte(want)) {
		t.Fatalf("server said %q, want %q", log.Bytes(), want)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func TestIMAPClose(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	c := login(t, s, alice, appAccessToken(t, f))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := s.Sessions(); got != 0 {
		t.Fatalf("Sessions after Close: got %d, want 0", got)
	}
	<-c.Closed()
	if _, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatalf("dial after Close: got nil, want an error")
	}
	if err := s.AddMailbox(alice); err == nil {
		t.Fatalf("AddMailbox twice: got nil, want an error")
	}
}
