package harness

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

func startPOP3Fixture(t *testing.T) *fixture {
	t.Helper()
	s := newSigner(t, testKID)
	dv := StartDovecot(t, DovecotOptions{
		KeyID:        testKID,
		PublicKeyPEM: s.publicKeyPEM(t),
		Issuers:      []string{testIssuer},
		Audience:     testAudience,
		Mailboxes:    []string{testMailbox, "sales@contoso.com"},
		POP3:         true,
	})
	if dv.POP3Addr == "" {
		t.Fatalf("POP3Addr empty")
	}
	return &fixture{dv: dv, signer: s}
}

// popConn speaks POP3 by hand.
type popConn struct {
	t    *testing.T
	conn *tls.Conn
	r    *bufio.Reader
}

func dialPOP3(t *testing.T, dv *Dovecot) *popConn {
	t.Helper()
	conn, err := tls.Dial("tcp", dv.POP3Addr, dv.TLSConfig())
	if err != nil {
		t.Fatalf("dial %s: %v\n%s", dv.POP3Addr, err, dv.LogTail())
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := &popConn{t: t, conn: conn, r: bufio.NewReader(conn)}
	if g := c.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("got greeting %q, want +OK", g)
	}
	return c
}

func (c *popConn) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

func (c *popConn) cmd(line string) string {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("writing: %v", err)
	}
	return c.line()
}

func (c *popConn) ok(line string) string {
	c.t.Helper()
	got := c.cmd(line)
	if !strings.HasPrefix(got, "+OK") {
		c.t.Fatalf("%.40s: got %q, want +OK", line, got)
	}
	return got
}

// multi returns the body of a multi-line reply, undoing dot-stuffing.
func (c *popConn) multi(line string) []byte {
	c.t.Helper()
	c.ok(line)
	var b bytes.Buffer
	for {
		l, err := c.r.ReadBytes('\n')
		if err != nil {
			c.t.Fatalf("%s: reading: %v", line, err)
		}
		if string(l) == ".\r\n" {
			return b.Bytes()
		}
		b.Write(bytes.TrimPrefix(l, []byte(".")))
	}
}

// auth runs AUTH XOAUTH2, with the response on the AUTH line (ir) or
// after "+", answers an error challenge with an empty line, and returns
// the final reply and the challenge.
func (c *popConn) auth(user, token string, ir bool) (reply, challenge string) {
	c.t.Helper()
	resp := base64.StdEncoding.EncodeToString(xoauth2.Response(user, token))
	if ir {
		reply = c.cmd("AUTH XOAUTH2 " + resp)
	} else {
		if got := c.cmd("AUTH XOAUTH2"); !strings.HasPrefix(got, "+") {
			c.t.Fatalf("AUTH XOAUTH2: got %q, want +", got)
		}
		reply = c.cmd(resp)
	}
	if strings.HasPrefix(reply, "+") && !strings.HasPrefix(reply, "+OK") {
		challenge, reply = reply, c.cmd("")
	}
	return reply, challenge
}

func (c *popConn) stat() (n, size int) {
	c.t.Helper()
	line := c.ok("STAT")
	if _, err := fmt.Sscanf(line, "+OK %d %d", &n, &size); err != nil {
		c.t.Fatalf("STAT: %q: %v", line, err)
	}
	return n, size
}

func popMessage(subject string) []byte {
	return []byte("From: a@example.com\r\nTo: " + testMailbox + "\r\nSubject: " + subject + "\r\n\r\nhello\r\n.leading dot\r\n")
}

func TestDovecotPOP3(t *testing.T) {
	t.Parallel()
	f := startPOP3Fixture(t)
	for _, subject := range []string{"first", "second"} {
		if err := f.dv.Deliver(testMailbox, popMessage(subject)); err != nil {
			t.Fatalf("Deliver: %v\n%s", err, f.dv.LogTail())
		}
	}
	tokens := []struct {
		name  string
		token string
		ir    bool
	}{
		{"user token", f.signer.sign(t, with(userClaims(testMailbox), "scp", "POP.AccessAsUser.All")), false},
		{"app token, initial response", f.signer.sign(t, with(appClaims(), "roles", []string{"POP.AccessAsApp"})), true},
	}
	for _, tc := range tokens {
		t.Run(tc.name, func(t *testing.T) {
			c := dialPOP3(t, f.dv)
			capa := string(c.multi("CAPA"))
			for _, want := range []string{"UIDL", "TOP", "SASL XOAUTH2"} {
				if !strings.Contains(capa, want+"\r\n") {
					t.Fatalf("CAPA %q lacks %s", capa, want)
				}
			}
			if reply, _ := c.auth(testMailbox, tc.token, tc.ir); !strings.HasPrefix(reply, "+OK") {
				t.Fatalf("AUTH XOAUTH2: got %q\n%s", reply, f.dv.LogTail())
			}
			if n, _ := c.stat(); n != 2 {
				t.Fatalf("STAT: got %d messages, want 2", n)
			}
			uidl := c.multi("UIDL")
			if n := bytes.Count(uidl, []byte("\r\n")); n != 2 {
				t.Fatalf("UIDL: got %q", uidl)
			}
			for i, subject := range []string{"first", "second"} {
				msg := c.multi(fmt.Sprint("RETR ", i+1))
				// LMTP delivery adds Return-Path, Delivered-To and Received.
				if !bytes.HasSuffix(msg, popMessage(subject)) {
					t.Fatalf("RETR %d: got %q, want it to end with %q", i+1, msg, popMessage(subject))
				}
			}
			if top := c.multi("TOP 1 0"); !bytes.HasSuffix(top, []byte("Subject: first\r\n\r\n")) {
				t.Fatalf("TOP 1 0: got %q", top)
			}
			// DELE and a dropped connection: nothing is deleted.
			c.ok("DELE 1")
			c.conn.Close()
			c = dialPOP3(t, f.dv)
			if reply, _ := c.auth(testMailbox, tc.token, tc.ir); !strings.HasPrefix(reply, "+OK") {
				t.Fatalf("AUTH XOAUTH2: got %q", reply)
			}
			if n, _ := c.stat(); n != 2 {
				t.Fatalf("STAT after a dropped connection: got %d messages, want 2", n)
			}
			c.conn.Close()
		})
	}

	// DELE and QUIT deletes; a message delivered meanwhile is listed next.
	token := tokens[0].token
	c := dialPOP3(t, f.dv)
	c.auth(testMailbox, token, false)
	c.ok("DELE 1")
	c.ok("QUIT")
	if err := f.dv.Deliver(testMailbox, popMessage("third")); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	c = dialPOP3(t, f.dv)
	c.auth(testMailbox, token, false)
	if n, _ := c.stat(); n != 2 {
		t.Fatalf("STAT after DELE 1 and QUIT: got %d messages, want 2", n)
	}
	for i, subject := range []string{"second", "third"} {
		if msg := c.multi(fmt.Sprint("RETR ", i+1)); !bytes.HasSuffix(msg, popMessage(subject)) {
			t.Fatalf("RETR %d: got %q, want %s", i+1, msg, subject)
		}
	}
	c.ok("QUIT")
}

func TestDovecotPOP3AppTokenOpensAnyMailbox(t *testing.T) {
	t.Parallel()
	f := startPOP3Fixture(t)
	c := dialPOP3(t, f.dv)
	if reply, _ := c.auth("sales@contoso.com", f.signer.sign(t, appClaims()), false); !strings.HasPrefix(reply, "+OK") {
		t.Fatalf("AUTH XOAUTH2: got %q\n%s", reply, f.dv.LogTail())
	}
	if n, _ := c.stat(); n != 0 {
		t.Fatalf("STAT: got %d messages, want 0", n)
	}
}

func TestDovecotPOP3RefusesBadTokens(t *testing.T) {
	t.Parallel()
	f := startPOP3Fixture(t)
	now := time.Now().Unix()
	user := userClaims(testMailbox)
	cases := []struct {
		name, user, token string
	}{
		{"expired", testMailbox, f.signer.sign(t, with(user, "iat", now-7200, "nbf", now-7200, "exp", now-3600))},
		{"other key", testMailbox, newSigner(t, testKID).sign(t, user)},
		{"wrong audience", testMailbox, f.signer.sign(t, with(user, "aud", "https://graph.microsoft.com"))},
		{"other user's token", testMailbox, f.signer.sign(t, userClaims("sales@contoso.com"))},
		{"app token for unknown mailbox", "nobody@contoso.com", f.signer.sign(t, appClaims())},
		{"not a JWT", testMailbox, "opaque-token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, ir := range []bool{false, true} {
				c := dialPOP3(t, f.dv)
				start := time.Now()
				reply, challenge := c.auth(tc.user, tc.token, ir)
				// Like Exchange's failure, an error challenge to answer, then
				// -ERR; a temporary failure would mean an internal error.
				if !strings.HasPrefix(reply, "-ERR [AUTH]") {
					t.Fatalf("ir=%v: got %q, want -ERR [AUTH]...\n%s", ir, reply, f.dv.LogTail())
				}
				if challenge == "" {
					t.Fatalf("ir=%v: no error challenge before %q", ir, reply)
				}
				if took := time.Since(start); took > time.Second {
					t.Fatalf("refusal took %v, want no failure delay", took)
				}
				// Still not logged in.
				if got := c.cmd("STAT"); !strings.HasPrefix(got, "-ERR") {
					t.Fatalf("STAT after a refusal: got %q", got)
				}
			}
		})
	}
	t.Run("USER and PASS", func(t *testing.T) {
		c := dialPOP3(t, f.dv)
		c.cmd("USER " + testMailbox)
		if got := c.cmd("PASS " + f.signer.sign(t, user)); !strings.HasPrefix(got, "-ERR") {
			t.Fatalf("PASS: got %q, want -ERR", got)
		}
	})
}

// A message LMTP delivered is retrieved with curl, a real POP3 client,
// byte for byte as Dovecot stores it.
func TestDovecotPOP3Curl(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	f := startPOP3Fixture(t)
	big := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz.ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n.dot\r\n"), 1<<20/72)
	msg := append(popMessage("big"), big...)
	if err := f.dv.Deliver(testMailbox, msg); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	token := f.signer.sign(t, userClaims(testMailbox))
	c := dialPOP3(t, f.dv)
	c.auth(testMailbox, token, false)
	want := c.multi("RETR 1")
	c.ok("QUIT")
	if !bytes.HasSuffix(want, msg) {
		t.Fatalf("RETR: the message does not end as delivered")
	}

	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, f.dv.CACertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	cmd := exec.Command(curl, "-sS", "--cacert", ca, "--login-options", "AUTH=XOAUTH2",
		"--user", testMailbox+":", "--oauth2-bearer", token, "-o", out,
		"pop3s://"+f.dv.POP3Addr+"/1")
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("curl: %v\n%s\n%s", err, output, f.dv.LogTail())
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("curl got %d bytes, RETR %d", len(got), len(want))
	}
	// curl's DELE (-X DELE with -I) and QUIT delete.
	cmd = exec.Command(curl, "-sS", "--cacert", ca, "--login-options", "AUTH=XOAUTH2",
		"--user", testMailbox+":", "--oauth2-bearer", token, "-X", "DELE", "-I",
		"pop3s://"+f.dv.POP3Addr+"/1")
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("curl DELE: %v\n%s", err, output)
	}
	c = dialPOP3(t, f.dv)
	c.auth(testMailbox, token, false)
	if n, _ := c.stat(); n != 0 {
		t.Fatalf("STAT after curl's DELE: got %d messages, want 0", n)
	}
}
