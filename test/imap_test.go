package test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// notifyTimeout bounds waits for an IDLE notification.
const notifyTimeout = 20 * time.Second

func TestIMAPSessionThroughProxy(t *testing.T) {
	env := newSimEnv(t)
	exerciseIMAP(t, env.Daemon.IMAPAddr, mailbox, env.Password)
}

// exerciseIMAP logs in through the proxy and uses the mailbox the way a
// contact-center system does: list, select, fetch, append, IDLE.
func exerciseIMAP(t *testing.T, addr, user, password string) {
	t.Helper()
	c := dialProxy(t, addr)
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("LOGIN through proxy: %v", err)
	}
	mailboxes, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatalf("LIST: %v", err)
	}
	if !hasMailbox(mailboxes, "INBOX") {
		t.Fatalf("LIST: got %v, want INBOX among them", mailboxes)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	before := sel.NumMessages

	body := []byte("From: acd@contoso.com\r\nTo: " + user + "\r\nSubject: broker e2e " + t.Name() +
		"\r\nMessage-ID: <" + fmt.Sprint(time.Now().UnixNano()) + "@test>\r\n\r\n" +
		strings.Repeat("line of body text\r\n", 2000))
	app := c.Append("INBOX", int64(len(body)), nil)
	if _, err := app.Write(body); err != nil {
		t.Fatalf("APPEND write: %v", err)
	}
	if err := app.Close(); err != nil {
		t.Fatalf("APPEND close: %v", err)
	}
	if _, err := app.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}

	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("NOOP: %v", err)
	}
	seq := imap.SeqSetNum(before + 1)
	msgs, err := c.Fetch(seq, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("FETCH %v: got %d messages, want 1", seq, len(msgs))
	}
	var got []byte
	for _, b := range msgs[0].BodySection {
		got = b.Bytes
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("FETCH body: got %d bytes, want the %d appended bytes back", len(got), len(body))
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}

	exerciseIDLE(t, addr, user, password)
}

// exerciseIDLE has one client IDLE while another appends; the first must be
// told of the new message through the proxy.
func exerciseIDLE(t *testing.T, addr, user, password string) {
	t.Helper()
	exists := make(chan uint32, 16)
	idler, err := imapclient.DialInsecure(addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					exists <- *data.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer idler.Close()
	if err := idler.Login(user, password).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	sel, err := idler.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	idle, err := idler.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}

	other := dialProxy(t, addr)
	if err := other.Login(user, password).Wait(); err != nil {
		t.Fatalf("second LOGIN: %v", err)
	}
	msg := []byte("Subject: idle wake-up\r\n\r\nhello\r\n")
	app := other.Append("INBOX", int64(len(msg)), nil)
	app.Write(msg)
	app.Close()
	if _, err := app.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}

	select {
	case n := <-exists:
		if n != sel.NumMessages+1 {
			t.Fatalf("IDLE EXISTS: got %d, want %d", n, sel.NumMessages+1)
		}
	case <-time.After(notifyTimeout):
		t.Fatalf("IDLE: no EXISTS within %v", notifyTimeout)
	}
	if err := idle.Close(); err != nil {
		t.Fatalf("DONE: %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE end: %v", err)
	}
}

func hasMailbox(list []*imap.ListData, name string) bool {
	for _, m := range list {
		if m.Mailbox == name {
			return true
		}
	}
	return false
}

// loginError returns the IMAP error of a failed LOGIN through the proxy.
func loginError(t *testing.T, addr, user, password string) *imap.Error {
	t.Helper()
	c := dialProxy(t, addr)
	err := c.Login(user, password).Wait()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) {
		t.Fatalf("LOGIN %s: got %v, want an IMAP NO", user, err)
	}
	return imapErr
}

func TestWrongAndUnknownLoginsAnsweredAlike(t *testing.T) {
	env := newSimEnv(t)
	wrong := loginError(t, env.Daemon.IMAPAddr, mailbox, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	unknown := loginError(t, env.Daemon.IMAPAddr, "nobody@contoso.com", env.Password)
	if wrong.Code != imap.ResponseCodeAuthenticationFailed {
		t.Fatalf("wrong password: got code %q, want AUTHENTICATIONFAILED", wrong.Code)
	}
	if wrong.Type != unknown.Type || wrong.Code != unknown.Code || wrong.Text != unknown.Text {
		t.Fatalf("unknown user answered %+v, wrong password %+v: want the same", unknown, wrong)
	}
	if n := env.Upstream.Logins(); n != 0 {
		t.Fatalf("upstream logins after refused local logins: got %d, want 0", n)
	}
}

func TestRevokedAppPasswordRefused(t *testing.T) {
	env := newSimEnv(t)
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("LOGIN before revoke: %v", err)
	}
	list := env.Daemon.cli("app-password", "list", mailbox)
	if !strings.Contains(list, env.PassID) || strings.Contains(list, "never") {
		t.Fatalf("list after a login: got\n%s\nwant %s with a last-used time", list, env.PassID)
	}
	env.Daemon.cli("app-password", "revoke", mailbox, env.PassID)
	e := loginError(t, env.Daemon.IMAPAddr, mailbox, env.Password)
	if e.Code != imap.ResponseCodeAuthenticationFailed {
		t.Fatalf("revoked password: got %+v, want NO [AUTHENTICATIONFAILED]", e)
	}
	if list := env.Daemon.cli("app-password", "list", mailbox); strings.Contains(list, env.PassID) {
		t.Fatalf("list after revoke still shows %s:\n%s", env.PassID, list)
	}
}

func TestUpstreamDownIsUnavailable(t *testing.T) {
	env := newSimEnv(t)
	env.Upstream.Close()
	e := loginError(t, env.Daemon.IMAPAddr, mailbox, env.Password)
	if e.Code != imap.ResponseCodeUnavailable {
		t.Fatalf("upstream down: got %+v, want NO [UNAVAILABLE]", e)
	}
}

func TestIdentityPlatformOutageWithCachedToken(t *testing.T) {
	env := newSimEnv(t)
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("first LOGIN: %v", err)
	}
	requests := env.Entra.TokenRequests()
	env.Entra.SetFailure(&m365Unavailable)
	for i := 0; i < 3; i++ {
		c := dialProxy(t, env.Daemon.IMAPAddr)
		if err := c.Login(mailbox, env.Password).Wait(); err != nil {
			t.Fatalf("LOGIN %d during identity outage: %v", i, err)
		}
	}
	if got := env.Entra.TokenRequests(); got != requests {
		t.Fatalf("token requests during outage with a fresh cached token: got %d, want %d", got-requests, 0)
	}
}
