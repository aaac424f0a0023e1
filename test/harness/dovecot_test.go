package harness

import (
	"io"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

const (
	testTenant   = "9188040d-6c67-4c5b-b112-36a304b66dad"
	testIssuer   = "https://sts.windows.net/" + testTenant + "/"
	testAudience = "https://outlook.office.com"
	testMailbox  = "support@contoso.com"
	testKID      = "kid-1"
)

type fixture struct {
	dv     *Dovecot
	signer *signer
}

func startFixture(t *testing.T) *fixture {
	t.Helper()
	s := newSigner(t, testKID)
	start := time.Now()
	dv := StartDovecot(t, DovecotOptions{
		KeyID:        testKID,
		PublicKeyPEM: s.publicKeyPEM(t),
		Issuers:      []string{testIssuer},
		Audience:     testAudience,
		Mailboxes:    []string{testMailbox, "sales@contoso.com"},
	})
	t.Logf("StartDovecot took %v", time.Since(start))
	return &fixture{dv: dv, signer: s}
}

func userClaims(upn string) map[string]any {
	now := time.Now().Unix()
	return map[string]any{
		"aud": testAudience, "iss": testIssuer, "tid": testTenant,
		"iat": now - 60, "nbf": now - 60, "exp": now + 3600,
		"sub": "user-sub", "oid": "user-oid", "upn": upn, "unique_name": upn,
		"appid": "client-id", "scp": "IMAP.AccessAsUser.All SMTP.Send",
		"ver": "1.0",
	}
}

func appClaims() map[string]any {
	now := time.Now().Unix()
	return map[string]any{
		"aud": testAudience, "iss": testIssuer, "tid": testTenant,
		"iat": now - 60, "nbf": now - 60, "exp": now + 3600,
		"sub": "sp-oid", "oid": "sp-oid", "idtyp": "app",
		"appid": "client-id", "roles": []string{"IMAP.AccessAsApp"},
		"ver": "1.0",
	}
}

func with(claims map[string]any, kv ...any) map[string]any {
	c := maps.Clone(claims)
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
		} else {
			c[kv[i].(string)] = kv[i+1]
		}
	}
	return c
}

func (f *fixture) dial(t *testing.T) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(f.dv.IMAPAddr, &imapclient.Options{TLSConfig: f.dv.TLSConfig()})
	if err != nil {
		t.Fatalf("dial %s: %v\n%s", f.dv.IMAPAddr, err, f.dv.LogTail())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) login(t *testing.T, user, token string) (*imapclient.Client, error) {
	t.Helper()
	c := f.dial(t)
	return c, c.Authenticate(xoauth2.NewClient(user, token))
}

func inboxMessages(t *testing.T, c *imapclient.Client) uint32 {
	t.Helper()
	mbox, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	return mbox.NumMessages
}

func TestDovecotAcceptsUserAndAppTokens(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	msg := "From: a@example.com\r\nTo: " + testMailbox + "\r\nSubject: seeded\r\n\r\nhello\r\n"
	if err := f.dv.Deliver(testMailbox, []byte(msg)); err != nil {
		t.Fatalf("Deliver: %v\n%s", err, f.dv.LogTail())
	}

	tokens := map[string]string{
		"user": f.signer.sign(t, userClaims(testMailbox)),
		"app":  f.signer.sign(t, appClaims()),
	}
	for name, token := range tokens {
		t.Run(name, func(t *testing.T) {
			c, err := f.login(t, testMailbox, token)
			if err != nil {
				t.Fatalf("AUTHENTICATE XOAUTH2: %v\n%s", err, f.dv.LogTail())
			}
			list, err := c.List("", "*", nil).Collect()
			if err != nil {
				t.Fatalf("LIST: %v", err)
			}
			if len(list) == 0 || list[0].Mailbox != "INBOX" {
				t.Fatalf("LIST got %v, want INBOX", list)
			}
			if n := inboxMessages(t, c); n != 1 {
				t.Fatalf("got %d messages in INBOX, want 1", n)
			}
			fetched, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
			if err != nil {
				t.Fatalf("FETCH: %v", err)
			}
			if got := fetched[0].Envelope.Subject; got != "seeded" {
				t.Fatalf("got subject %q, want %q", got, "seeded")
			}
		})
	}
}

func TestDovecotAppTokenOpensAnyMailbox(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	c, err := f.login(t, "sales@contoso.com", f.signer.sign(t, appClaims()))
	if err != nil {
		t.Fatalf("AUTHENTICATE XOAUTH2: %v\n%s", err, f.dv.LogTail())
	}
	if n := inboxMessages(t, c); n != 0 {
		t.Fatalf("got %d messages in INBOX, want 0", n)
	}
}

func TestDovecotAcceptsTokenVariants(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	cases := []struct {
		name, user, token string
	}{
		{"user token with idtyp", testMailbox, f.signer.sign(t, with(userClaims(testMailbox), "idtyp", "user"))},
		{"upn in other case", testMailbox, f.signer.sign(t, userClaims("Support@Contoso.COM"))},
		{"user= in other case", "SUPPORT@contoso.com", f.signer.sign(t, userClaims(testMailbox))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawAuthenticate(t, f.dv, tc.user, tc.token); !strings.HasPrefix(got, "a OK ") {
				t.Fatalf("got %q, want a OK\n%s", got, f.dv.LogTail())
			}
		})
	}
}

func TestDovecotRefusesBadTokens(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	other := newSigner(t, testKID)
	now := time.Now().Unix()
	user, app := userClaims(testMailbox), appClaims()
	cases := []struct {
		name, user, token string
	}{
		{"expired", testMailbox, f.signer.sign(t, with(user, "iat", now-7200, "nbf", now-7200, "exp", now-3600))},
		{"not yet valid", testMailbox, f.signer.sign(t, with(user, "nbf", now+600))},
		{"other key", testMailbox, other.sign(t, user)},
		{"unknown kid", testMailbox, (&signer{kid: "kid-2", key: f.signer.key}).sign(t, user)},
		{"wrong issuer", testMailbox, f.signer.sign(t, with(user, "iss", "https://sts.windows.net/other-tenant/"))},
		{"wrong audience", testMailbox, f.signer.sign(t, with(user, "aud", "https://graph.microsoft.com"))},
		{"other user's token", testMailbox, f.signer.sign(t, userClaims("sales@contoso.com"))},
		{"other user's token with idtyp", testMailbox, f.signer.sign(t, with(userClaims("sales@contoso.com"), "idtyp", "user"))},
		{"unknown mailbox", "nobody@contoso.com", f.signer.sign(t, userClaims("nobody@contoso.com"))},
		{"app wrong audience", testMailbox, f.signer.sign(t, with(app, "aud", "https://graph.microsoft.com"))},
		{"app wrong issuer", testMailbox, f.signer.sign(t, with(app, "iss", "https://sts.windows.net/other-tenant/"))},
		{"app expired", testMailbox, f.signer.sign(t, with(app, "iat", now-7200, "nbf", now-7200, "exp", now-3600))},
		{"app token for unknown mailbox", "nobody@contoso.com", f.signer.sign(t, app)},
		{"user token claiming app roles", testMailbox, f.signer.sign(t, with(userClaims("x@contoso.com"), "roles", []string{"IMAP.AccessAsApp"}))},
		{"idtyp user without upn", testMailbox, f.signer.sign(t, with(app, "idtyp", "user"))},
		{"not a JWT", testMailbox, "opaque-token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			got := rawAuthenticate(t, f.dv, tc.user, tc.token)
			// Exchange answers NO too; a temporary failure here would mean
			// an internal error in Dovecot's auth, which broker would
			// handle differently.
			if want := "a NO [AUTHENTICATIONFAILED]"; !strings.HasPrefix(got, want) {
				t.Fatalf("got %q, want %s...\n%s", got, want, f.dv.LogTail())
			}
			if took := time.Since(start); took > time.Second {
				t.Fatalf("refusal took %v, want no failure delay", took)
			}
		})
	}
}

func TestDovecotRefusesLogin(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	c := f.dial(t)
	if err := c.Login(testMailbox, f.signer.sign(t, userClaims(testMailbox))).Wait(); err == nil {
		t.Fatalf("LOGIN succeeded, want refusal")
	}
	if !c.Caps().Has(imap.CapLoginDisabled) {
		t.Fatalf("got caps %v, want LOGINDISABLED", c.Caps())
	}
	if mechs := c.Caps().AuthMechanisms(); len(mechs) != 1 || mechs[0] != "XOAUTH2" {
		t.Fatalf("got AUTH mechanisms %v, want only XOAUTH2", mechs)
	}
}

func TestDovecotDeliverRefusesUnknownMailbox(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	err := f.dv.Deliver("nobody@contoso.com", []byte("Subject: x\r\n\r\nx\r\n"))
	if err == nil || !strings.Contains(err.Error(), "550") {
		t.Fatalf("got %v, want a 550 refusal", err)
	}
}

func TestDovecotStop(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	c := rawDial(t, f.dv)
	if got := c.authenticate(testMailbox, f.signer.sign(t, userClaims(testMailbox))); !strings.HasPrefix(got, "a OK ") {
		t.Fatalf("got %q, want a OK", got)
	}
	pgid := f.dv.pgid
	if n := liveProcesses(t, pgid); n < 2 {
		t.Fatalf("got %d processes in group %d while running, want the master and its children", n, pgid)
	}
	start := time.Now()
	if err := f.dv.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("Stop took %v", time.Since(start))
	// Dovecot 2.3 closes sessions without a BYE when it shuts down.
	if line, err := c.r.ReadString('\n'); err != io.EOF {
		t.Fatalf("got %q, %v after Stop, want EOF", line, err)
	}
	if n := liveProcesses(t, pgid); n != 0 {
		t.Fatalf("got %d live processes in group %d after Stop, want 0", n, pgid)
	}
	if err := f.dv.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// liveProcesses counts the processes of a group that are not zombies: a
// container's init may not reap the children Dovecot's master leaves.
func liveProcesses(t *testing.T, pgid int) int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatalf("listing /proc: %v", err)
	}
	n := 0
	for _, p := range stats {
		data, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		// Fields after the command, which is in parentheses and may hold
		// spaces: state ppid pgrp …
		_, rest, ok := strings.Cut(string(data), ") ")
		fields := strings.Fields(rest)
		if !ok || len(fields) < 3 {
			continue
		}
		if g, _ := strconv.Atoi(fields[2]); g == pgid && fields[0] != "Z" {
			n++
		}
	}
	return n
}

// Dovecot looks the key up under the token's azp: without
// AuthorizedParties, a v2.0 token (which has azp) is refused.
func TestDovecotAuthorizedParties(t *testing.T) {
	t.Parallel()
	s := newSigner(t, "kid/with%odd")
	dv := StartDovecot(t, DovecotOptions{
		KeyID:             s.kid,
		PublicKeyPEM:      s.publicKeyPEM(t),
		Issuers:           []string{testIssuer},
		Audience:          testAudience,
		Mailboxes:         []string{testMailbox},
		AuthorizedParties: []string{"client/id"},
	})
	cases := []struct {
		name, azp, want string
	}{
		{"no azp", "", "a OK "},
		{"listed azp", "client/id", "a OK "},
		{"other azp", "other-client", "a NO [AUTHENTICATIONFAILED]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			claims := userClaims(testMailbox)
			if tc.azp != "" {
				claims["azp"] = tc.azp
			}
			if got := rawAuthenticate(t, dv, testMailbox, s.sign(t, claims)); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("got %q, want %s...\n%s", got, tc.want, dv.LogTail())
			}
		})
	}
}

var _ TB = testing.TB(nil)

func BenchmarkStartDovecot(b *testing.B) {
	s := newSigner(b, testKID)
	opts := DovecotOptions{
		KeyID:        testKID,
		PublicKeyPEM: s.publicKeyPEM(b),
		Issuers:      []string{testIssuer},
		Audience:     testAudience,
		Mailboxes:    []string{testMailbox},
	}
	for b.Loop() {
		StartDovecot(b, opts).kill()
	}
}
