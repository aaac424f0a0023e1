package m365sim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

const external = "someone@example.com"

func newSMTP(t *testing.T, e *Entra, opts SMTPOptions) *SMTP {
	t.Helper()
	s, err := NewSMTP(e, opts)
	if err != nil {
		t.Fatalf("NewSMTP: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func smtpTLSConfig(t *testing.T, s *SMTP) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatalf("CACertPEM: no certificate")
	}
	return &tls.Config{RootCAs: pool}
}

// dialSMTP connects as the service expects: STARTTLS, implicit TLS, or
// plain text for NoSTARTTLS.
func dialSMTP(t *testing.T, s *SMTP) *smtp.Client {
	t.Helper()
	var c *smtp.Client
	var err error
	switch {
	case s.opts.ImplicitTLS:
		c, err = smtp.DialTLS(s.Addr(), smtpTLSConfig(t, s))
	case s.opts.NoSTARTTLS:
		c, err = smtp.Dial(s.Addr())
	default:
		c, err = smtp.DialStartTLS(s.Addr(), smtpTLSConfig(t, s))
	}
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// smtpLogin dials and authenticates with XOAUTH2.
func smtpLogin(t *testing.T, s *SMTP, mailbox, token string) *smtp.Client {
	t.Helper()
	c := dialSMTP(t, s)
	if err := c.Auth(xoauth2.NewClient(mailbox, token)); err != nil {
		t.Fatalf("AUTH XOAUTH2 %s: %v", mailbox, err)
	}
	return c
}

// send runs one mail transaction and returns the text of the final reply.
func send(c *smtp.Client, from string, to []string, msg []byte) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(msg); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// wantReply checks that err is the server's reply with code and enhanced
// code.
func wantReply(t *testing.T, err error, code int, enh smtp.EnhancedCode) {
	t.Helper()
	var smtpErr *smtp.SMTPError
	if !errors.As(err, &smtpErr) || smtpErr.Code != code || smtpErr.EnhancedCode != enh {
		t.Fatalf("got %v, want %d %d.%d.%d", err, code, enh[0], enh[1], enh[2])
	}
}

func testMessage(subject string, bodyBytes int) []byte {
	msg := fmt.Appendf(nil, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\n", alice, bob, subject)
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\r\n")
	for len(msg) < bodyBytes {
		msg = append(msg, line...)
	}
	return msg
}

var queuedRE = regexp.MustCompile(`^2\.0\.0 OK <(SIM0PR01MB0001[0-9A-F]{28})@SIM0PR01MB0001\.namprd01\.prod\.outlook\.com> \[Hostname=SIM0PR01MB0001\.namprd01\.prod\.outlook\.com\]$`)

// queueID returns the queue ID of a 250 reply to DATA.
func queueID(t *testing.T, reply string) string {
	t.Helper()
	m := queuedRE.FindStringSubmatch(reply)
	if m == nil {
		t.Fatalf("DATA reply: got %q, want %s", reply, queuedRE)
	}
	return m[1]
}

func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSMTPSend(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{})
	c := dialSMTP(t, s)
	for _, tt := range []struct{ ext, param string }{
		{"AUTH", "LOGIN XOAUTH2"},
		{"SIZE", "157286400"},
		{"PIPELINING", ""},
		{"8BITMIME", ""},
		{"SMTPUTF8", ""},
		{"DSN", ""},
		{"CHUNKING", ""},
		{"ENHANCEDSTATUSCODES", ""},
	} {
		if ok, param := c.Extension(tt.ext); !ok || param != tt.param {
			t.Fatalf("EHLO after STARTTLS: %s: got %v %q, want true %q", tt.ext, ok, param, tt.param)
		}
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Fatalf("EHLO after STARTTLS offers STARTTLS")
	}
	if err := c.Auth(xoauth2.NewClient(alice, appAccessToken(t, f))); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	msg := testMessage("hello", 0)
	reply, err := send(c, alice, []string{bob, external}, msg)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	id := queueID(t, reply)
	msgs, err := s.WaitMessages(waitCtx(t), 1)
	if err != nil {
		t.Fatalf("WaitMessages: %v", err)
	}
	want := Message{Mailbox: alice, From: alice, To: []string{bob, external}, Size: int64(len(msg)), SHA256: sha256.Sum256(msg), Data: msg, QueueID: id}
	if len(msgs) != 1 || !equalMessage(msgs[0], want) {
		t.Fatalf("Messages: got %+v, want [%+v]", msgs, want)
	}
	if s.Logins() != 1 || s.Connections() != 1 || s.MaxConcurrent(alice) != 1 {
		t.Fatalf("got %d logins, %d connections, max concurrent %d; want 1, 1, 1", s.Logins(), s.Connections(), s.MaxConcurrent(alice))
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	if err := s.WaitConnections(waitCtx(t), 0); err != nil {
		t.Fatalf("WaitConnections: %v", err)
	}
}

func equalMessage(a, b Message) bool {
	return a.Mailbox == b.Mailbox && a.From == b.From && slices.Equal(a.To, b.To) && a.Size == b.Size &&
		a.SHA256 == b.SHA256 && bytes.Equal(a.Data, b.Data) && (a.Data == nil) == (b.Data == nil) && a.QueueID == b.QueueID
}

// wire is a raw SMTP connection, to see what go-smtp's client hides.
type wire struct {
	t *testing.T
	*textproto.Conn
}

func dialWire(t *testing.T, conn net.Conn) *wire {
	t.Helper()
	w := &wire{t, textproto.NewConn(conn)}
	t.Cleanup(func() { w.Close() })
	return w
}

// cmd sends a line and reads the reply, which must have code.
func (w *wire) cmd(code int, format string, args ...any) string {
	w.t.Helper()
	if err := w.PrintfLine(format, args...); err != nil {
		w.t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
	return w.reply(code)
}

func (w *wire) reply(code int) string {
	w.t.Helper()
	got, msg, err := w.ReadResponse(0)
	if err != nil || got != code {
		w.t.Fatalf("got %d %q (%v), want %d", got, msg, err, code)
	}
	return msg
}

const greetingPrefix = "SIM0PR01MB0001.namprd01.prod.outlook.com Microsoft ESMTP MAIL Service ready at "

func TestSMTPBeforeSTARTTLS(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{})
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	w := dialWire(t, conn)
	if got := w.reply(220); !strings.HasPrefix(got, greetingPrefix) {
		t.Fatalf("greeting: got %q, want prefix %q", got, greetingPrefix)
	}
	ehlo := w.cmd(250, "EHLO client.example")
	if !strings.Contains(ehlo, "\nSTARTTLS") || strings.Contains(ehlo, "AUTH") {
		t.Fatalf("EHLO before STARTTLS: got %q, want STARTTLS and no AUTH", ehlo)
	}
	ir := base64.StdEncoding.EncodeToString(xoauth2.Response(alice, appAccessToken(t, f)))
	if got := w.cmd(523, "AUTH XOAUTH2 %s", ir); !strings.HasPrefix(got, "5.7.10 ") {
		t.Fatalf("AUTH before STARTTLS: got %q, want 523 5.7.10", got)
	}
	if got := w.cmd(530, "MAIL FROM:<%s>", alice); !strings.HasPrefix(got, "5.7.57 Client not authenticated to send mail.") {
		t.Fatalf("MAIL before STARTTLS: got %q, want 530 5.7.57", got)
	}
	if s.Logins() != 0 {
		t.Fatalf("Logins: got %d, want 0", s.Logins())
	}
}

func TestSMTPAuthFailures(t *testing.T) {
	f := newFixture(t)
	const carol = "carol@contoso.onmicrosoft.com"
	const imapOnly = "a0000000-0000-4000-8000-000000000003"
	f.e.AddApp(App{Tenant: domain, ClientID: imapOnly, Secret: secret, Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{alice}})
	f.e.AddApp(App{Tenant: domain, ClientID: confID, Secret: secret, Roles: []string{"SMTP.SendAsApp"}, Mailboxes: []string{alice, carol}})
	good := appAccessToken(t, f)
	appToken := func(clientID, scope string) string {
		t.Helper()
		return f.token(t, domain, form("grant_type", "client_credentials", "client_id", clientID, "client_secret", secret, "scope", scope)).AccessToken
	}
	bobSMTP := f.token(t, domain, ropc(bob, "bob's password", "https://outlook.office.com/SMTP.Send")).AccessToken
	aliceIMAP := f.token(t, domain, ropc(alice, alicePass, "https://outlook.office.com/IMAP.AccessAsUser.All")).AccessToken
	graphTok := appToken(confID, "https://graph.microsoft.com/.default")

	tests := []struct {
		name    string
		mailbox string
		token   string
		code    int
		enh     smtp.EnhancedCode
		reason  error
	}{
		{"garbage token", alice, "not-a-jwt", 535, smtp.EnhancedCode{5, 7, 3}, ErrTokenMalformed},
		{"app without SMTP.SendAsApp", alice, appToken(imapOnly, outlookDef), 535, smtp.EnhancedCode{5, 7, 3}, ErrTokenNoPermission},
		{"app without mailbox grant", bob, good, 535, smtp.EnhancedCode{5, 7, 3}, ErrNoMailboxAccess},
		{"user token, other mailbox", alice, bobSMTP, 535, smtp.EnhancedCode{5, 7, 3}, ErrNoMailboxAccess},
		{"user token without SMTP.Send", alice, aliceIMAP, 535, smtp.EnhancedCode{5, 7, 3}, ErrTokenNoPermission},
		{"graph audience", alice, graphTok, 535, smtp.EnhancedCode{5, 7, 3}, ErrTokenAudience},
		{"SMTP AUTH disabled", carol, good, 535, smtp.EnhancedCode{5, 7, 139}, ErrSMTPAuthDisabled},
	}
	for _, challenge := range []bool{false, true} {
		s := newSMTP(t, f.e, SMTPOptions{ErrorChallenge: challenge})
		s.DisableSMTPAuth("Carol@contoso.onmicrosoft.com")
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/challenge=%v", tt.name, challenge), func(t *testing.T) {
				c := dialSMTP(t, s)
				sc := xoauth2.NewClient(tt.mailbox, tt.token)
				wantReply(t, c.Auth(sc), tt.code, tt.enh)
				wantChallenge := ""
				if challenge {
					wantChallenge = xoauth2.DefaultErrorChallenge
				}
				if got := string(sc.Challenge()); got != wantChallenge {
					t.Fatalf("challenge: got %q, want %q", got, wantChallenge)
				}
				if got := s.LastAuthError(); !errors.Is(got, tt.reason) {
					t.Fatalf("reason: got %v, want %v", got, tt.reason)
				}
				// The client may try again on the same connection.
				if err := c.Auth(xoauth2.NewClient(alice, good)); err != nil {
					t.Fatalf("AUTH with a good token after a failure: %v", err)
				}
			})
		}
		if got, want := s.Logins(), int64(len(tests)); got != want {
			t.Fatalf("Logins: got %d, want %d", got, want)
		}
	}
}

func TestSMTPBasicAuthRefused(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{})
	c := dialSMTP(t, s)
	wantReply(t, c.Auth(sasl.NewLoginClient(alice, alicePass)), 535, smtp.EnhancedCode{5, 7, 139})
	if got := s.LastAuthError(); !errors.Is(got, ErrSMTPBasicAuth) {
		t.Fatalf("reason: got %v, want %v", got, ErrSMTPBasicAuth)
	}
	wantReply(t, c.Auth(sasl.NewPlainClient("", alice, alicePass)), 504, smtp.EnhancedCode{5, 7, 4})
	if s.Logins() != 0 {
		t.Fatalf("Logins: got %d, want 0", s.Logins())
	}
}

func TestSMTPUserToken(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{})
	tok := f.token(t, domain, ropc(alice, alicePass, userScope)).AccessToken
	c := smtpLogin(t, s, "ALICE@contoso.onmicrosoft.com", tok)
	if _, err := send(c, alice, []string{bob}, testMessage("delegated", 0)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if msgs := s.Messages(); len(msgs) != 1 || msgs[0].Mailbox != alice {
		t.Fatalf("Messages: got %+v, want one of mailbox %s", msgs, alice)
	}
}

func TestSMTPEnvelope(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{MaxRecipients: 2})
	c := smtpLogin(t, s, alice, appAccessToken(t, f))
	wantReply(t, c.Mail(bob, nil), 550, smtp.EnhancedCode{5, 7, 60})
	wantReply(t, c.Mail("", nil), 550, smtp.EnhancedCode{5, 7, 60})
	if err := c.Mail("Alice@Contoso.onmicrosoft.com", nil); err != nil {
		t.Fatalf("MAIL FROM the mailbox in other case: %v", err)
	}
	wantReply(t, c.Rcpt("Reject.me@example.com", nil), 550, smtp.EnhancedCode{5, 1, 10})
	for _, rcpt := range []string{bob, external} {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatalf("RCPT %s: %v", rcpt, err)
		}
	}
	wantReply(t, c.Rcpt("third@example.com", nil), 452, smtp.EnhancedCode{4, 5, 3})
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	msg := testMessage("two recipients", 0)
	w.Write(msg)
	if err := w.Close(); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 || msgs[0].From != "Alice@Contoso.onmicrosoft.com" || !slices.Equal(msgs[0].To, []string{bob, external}) {
		t.Fatalf("Messages: got %+v, want one from Alice@Contoso.onmicrosoft.com to %s, %s", msgs, bob, external)
	}
	// A new transaction starts with no recipients.
	if _, err := send(c, alice, []string{"a@example.com", "b@example.com"}, msg); err != nil {
		t.Fatalf("second send: %v", err)
	}
}

func TestSMTPMessageSize(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{MaxMessageBytes: 2000, KeepBytes: 500})
	c := smtpLogin(t, s, alice, appAccessToken(t, f))
	if size, ok := c.MaxMessageSize(); !ok || size != 2000 {
		t.Fatalf("SIZE: got %d %v, want 2000", size, ok)
	}
	_, err := send(c, alice, []string{bob}, testMessage("too big", 3000))
	wantReply(t, err, 552, smtp.EnhancedCode{5, 3, 4})

	tests := []struct {
		name     string
		size     int
		wantData bool
	}{
		{"kept", 200, true},
		{"not kept", 1000, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := testMessage(tt.name, tt.size)
			if _, err := send(c, alice, []string{bob}, msg); err != nil {
				t.Fatalf("send: %v", err)
			}
			msgs := s.Messages()
			if len(msgs) != i+1 {
				t.Fatalf("Messages: got %d, want %d", len(msgs), i+1)
			}
			got := msgs[i]
			if got.Size != int64(len(msg)) || got.SHA256 != sha256.Sum256(msg) {
				t.Fatalf("got size %d, SHA-256 %x; want %d, %x", got.Size, got.SHA256, len(msg), sha256.Sum256(msg))
			}
			if tt.wantData != (got.Data != nil) || tt.wantData && !bytes.Equal(got.Data, msg) {
				t.Fatalf("Data: got %d bytes (nil: %v), want kept: %v", len(got.Data), got.Data == nil, tt.wantData)
			}
		})
	}
}

func TestSMTPConcurrencyLimit(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{})
	tok := appAccessToken(t, f)
	var clients []*smtp.Client
	for range 3 {
		clients = append(clients, smtpLogin(t, s, alice, tok))
	}
	fourth := dialSMTP(t, s)
	wantReply(t, fourth.Auth(xoauth2.NewClient(alice, tok)), 432, smtp.EnhancedCode{4, 3, 2})
	if got := s.LastAuthError(); !errors.Is(got, ErrSMTPThreadLimit) {
		t.Fatalf("reason: got %v, want %v", got, ErrSMTPThreadLimit)
	}

	// The three send at once.
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for i, c := range clients {
		wg.Go(func() {
			_, err := send(c, alice, []string{bob}, testMessage(fmt.Sprint("concurrent ", i), 10000))
			errs <- err
		})
	}
	msgs, err := s.WaitMessages(waitCtx(t), len(clients))
	if err != nil {
		t.Fatalf("WaitMessages: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	ids := map[string]bool{}
	for _, m := range msgs {
		ids[m.QueueID] = true
	}
	if len(ids) != len(clients) {
		t.Fatalf("queue IDs: got %v, want %d different", ids, len(clients))
	}

	// A session that ends frees its slot.
	if err := clients[0].Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	if err := s.WaitConnections(waitCtx(t), 3); err != nil {
		t.Fatalf("WaitConnections: %v", err)
	}
	if err := fourth.Auth(xoauth2.NewClient(alice, tok)); err != nil {
		t.Fatalf("AUTH after a session ended: %v", err)
	}
	if got := s.MaxConcurrent(alice); got != 3 {
		t.Fatalf("MaxConcurrent: got %d, want 3", got)
	}
	// Other mailboxes have their own slots.
	f.e.AddApp(App{Tenant: domain, ClientID: confID, Secret: secret, Roles: []string{"SMTP.SendAsApp"}, Mailboxes: []string{alice, bob}})
	smtpLogin(t, s, bob, appAccessToken(t, f))
	if got := s.MaxConcurrent(bob); got != 1 {
		t.Fatalf("MaxConcurrent(bob): got %d, want 1", got)
	}
}

func TestSMTPDropNextData(t *testing.T) {
	f := newFixture(t)
	tok := appAccessToken(t, f)
	msg := testMessage("dropped", 1000)
	tests := []struct {
		name       string
		afterBytes int64
	}{
		{"at once", 0},
		{"midway", 100},
		{"after the whole message", 1 << 20},
	}
	for _, implicit := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/implicitTLS=%v", tt.name, implicit), func(t *testing.T) {
				s := newSMTP(t, f.e, SMTPOptions{ImplicitTLS: implicit})
				s.DropNextData(tt.afterBytes)
				c := smtpLogin(t, s, alice, tok)
				if err := c.Mail(alice, nil); err != nil {
					t.Fatalf("MAIL: %v", err)
				}
				if err := c.Rcpt(bob, nil); err != nil {
					t.Fatalf("RCPT: %v", err)
				}
				w, err := c.Data()
				if err != nil {
					t.Fatalf("DATA: %v", err)
				}
				// The message fits the client's buffer: Close sends it.
				if _, err := w.Write(msg); err != nil {
					t.Fatalf("Write: %v", err)
				}
				err = w.Close()
				var reply *smtp.SMTPError
				if err == nil || errors.As(err, &reply) {
					t.Fatalf("Close of DATA: got %v, want a connection error", err)
				}
				if err := s.WaitConnections(waitCtx(t), 0); err != nil {
					t.Fatalf("WaitConnections: %v", err)
				}
				if msgs := s.Messages(); len(msgs) != 0 {
					t.Fatalf("Messages: got %+v, want none", msgs)
				}
				// One-shot: the next DATA goes through.
				c = smtpLogin(t, s, alice, tok)
				if _, err := send(c, alice, []string{bob}, msg); err != nil {
					t.Fatalf("send after the drop: %v", err)
				}
				if msgs := s.Messages(); len(msgs) != 1 {
					t.Fatalf("Messages: got %d, want 1", len(msgs))
				}
			})
		}
	}
}

// startData begins a transaction and writes msg, leaving the final dot
// to Close.
func startData(t *testing.T, c *smtp.Client, msg []byte) *smtp.DataCommand {
	t.Helper()
	if err := c.Mail(alice, nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	if err := c.Rcpt(bob, nil); err != nil {
		t.Fatalf("RCPT: %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write(msg); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return w
}

func TestSMTPHoldNextData(t *testing.T) {
	f := newFixture(t)
	tok := appAccessToken(t, f)
	msg := testMessage("held", 0)

	t.Run("release", func(t *testing.T) {
		s := newSMTP(t, f.e, SMTPOptions{})
		release := s.HoldNextData()
		c := smtpLogin(t, s, alice, tok)
		w := startData(t, c, msg)
		done := make(chan error, 1)
		go func() { done <- w.Close() }()
		<-s.heldData()
		select {
		case err := <-done:
			t.Fatalf("DATA answered while held: %v", err)
		default:
		}
		if msgs := s.Messages(); len(msgs) != 0 {
			t.Fatalf("Messages while held: got %+v, want none", msgs)
		}
		release()
		if err := <-done; err != nil {
			t.Fatalf("DATA after release: %v", err)
		}
		if msgs := s.Messages(); len(msgs) != 1 {
			t.Fatalf("Messages: got %d, want 1", len(msgs))
		}
		release() // harmless
		// One-shot.
		if _, err := send(c, alice, []string{bob}, msg); err != nil {
			t.Fatalf("second send: %v", err)
		}
	})

	t.Run("close", func(t *testing.T) {
		s := newSMTP(t, f.e, SMTPOptions{})
		s.HoldNextData()
		c := smtpLogin(t, s, alice, tok)
		w := startData(t, c, msg)
		done := make(chan error, 1)
		go func() { done <- w.Close() }()
		<-s.heldData()
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		err := <-done
		var reply *smtp.SMTPError
		if err == nil || errors.As(err, &reply) {
			t.Fatalf("DATA held at Close: got %v, want a connection error", err)
		}
		if msgs := s.Messages(); len(msgs) != 0 {
			t.Fatalf("Messages: got %+v, want none", msgs)
		}
	})
}

func TestSMTPImplicitTLS(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{ImplicitTLS: true})

	conn, err := tls.Dial("tcp", s.Addr(), smtpTLSConfig(t, s))
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	w := dialWire(t, conn)
	if got := w.reply(220); !strings.HasPrefix(got, greetingPrefix) {
		t.Fatalf("greeting: got %q, want prefix %q", got, greetingPrefix)
	}

	c := dialSMTP(t, s)
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Fatalf("EHLO under implicit TLS offers STARTTLS")
	}
	if ok, param := c.Extension("AUTH"); !ok || param != "LOGIN XOAUTH2" {
		t.Fatalf("AUTH: got %v %q, want LOGIN XOAUTH2", ok, param)
	}
	if err := c.Auth(xoauth2.NewClient(alice, appAccessToken(t, f))); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	reply, err := send(c, alice, []string{bob}, testMessage("implicit", 0))
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if id := queueID(t, reply); s.Messages()[0].QueueID != id {
		t.Fatalf("QueueID: got %q, want %q", s.Messages()[0].QueueID, id)
	}
	// Plain text meets a TLS handshake that fails.
	plain, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer plain.Close()
	if _, err := plain.Write([]byte("EHLO client.example\r\n")); err != nil {
		t.Fatalf("EHLO in plain text: %v", err)
	}
	if got, _ := io.ReadAll(plain); bytes.HasPrefix(got, []byte("220")) {
		t.Fatalf("plain text client got %q, want no SMTP", got)
	}
}

func TestSMTPNoSTARTTLS(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{NoSTARTTLS: true})
	c := dialSMTP(t, s)
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Fatalf("EHLO offers STARTTLS")
	}
	if ok, param := c.Extension("AUTH"); !ok || param != "LOGIN XOAUTH2" {
		t.Fatalf("AUTH in plain text: got %v %q, want LOGIN XOAUTH2", ok, param)
	}
	if _, err := smtp.DialStartTLS(s.Addr(), smtpTLSConfig(t, s)); err == nil {
		t.Fatalf("DialStartTLS: got nil, want an error")
	}
	// It takes a token in the clear: the proxy must not send one.
	if err := c.Auth(xoauth2.NewClient(alice, appAccessToken(t, f))); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
}

// TestSMTPChunking sends with BDAT, which go-smtp's client does not use.
func TestSMTPChunking(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{NoSTARTTLS: true})
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	w := dialWire(t, conn)
	w.reply(220)
	w.cmd(250, "EHLO client.example")
	w.cmd(235, "AUTH XOAUTH2 %s", base64.StdEncoding.EncodeToString(xoauth2.Response(alice, appAccessToken(t, f))))
	w.cmd(250, "MAIL FROM:<%s>", alice)
	w.cmd(250, "RCPT TO:<%s>", bob)
	msg := testMessage("chunked", 100)
	half := len(msg) / 2
	fmt.Fprintf(w.W, "BDAT %d\r\n%s", half, msg[:half])
	w.W.Flush()
	w.reply(250)
	fmt.Fprintf(w.W, "BDAT %d LAST\r\n%s", len(msg)-half, msg[half:])
	w.W.Flush()
	queueID(t, w.reply(250))
	if msgs := s.Messages(); len(msgs) != 1 || !bytes.Equal(msgs[0].Data, msg) {
		t.Fatalf("Messages: got %+v, want the chunked message", msgs)
	}
}

func TestSMTPDeliverToIMAP(t *testing.T) {
	f := newFixture(t)
	is := newIMAP(t, f.e)
	s := newSMTP(t, f.e, SMTPOptions{IMAP: is})
	c := smtpLogin(t, s, alice, appAccessToken(t, f))
	msg := testMessage("delivered", 0)
	if _, err := send(c, alice, []string{"Bob@contoso.onmicrosoft.com", external, bob}, msg); err != nil {
		t.Fatalf("send: %v", err)
	}

	ic := login(t, is, bob, appAccessTokenFor(t, f, bob))
	sel, err := ic.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if want := uint32(len(seedMessages) + 1); sel.NumMessages != want {
		t.Fatalf("bob's INBOX: got %d messages, want %d (delivered once)", sel.NumMessages, want)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := ic.Fetch(imap.SeqSetNum(sel.NumMessages), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, msg) {
		t.Fatalf("delivered message: got %q, want %q", got, msg)
	}
}

func TestSMTPClose(t *testing.T) {
	f := newFixture(t)
	s := newSMTP(t, f.e, SMTPOptions{})
	c := smtpLogin(t, s, alice, appAccessToken(t, f))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := s.Connections(); got != 0 {
		t.Fatalf("Connections after Close: got %d, want 0", got)
	}
	if err := c.Noop(); err == nil {
		t.Fatalf("NOOP after Close: got nil, want an error")
	}
	if _, err := net.Dial("tcp", s.Addr()); err == nil {
		t.Fatalf("dial after Close: got nil, want an error")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := NewSMTP(f.e, SMTPOptions{ImplicitTLS: true, NoSTARTTLS: true}); err == nil {
		t.Fatalf("NewSMTP with ImplicitTLS and NoSTARTTLS: got nil, want an error")
	}
}
