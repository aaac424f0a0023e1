package test

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/test/m365sim"
)

// TestSMTPSimEndToEnd sends a message through broker's SMTP to the
// simulated Exchange, which delivers it to the simulated mailbox, and reads
// it back through broker's IMAP.
func TestSMTPSimEndToEnd(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{DeliverToIMAP: true})
	w := watchInbox(t, env.Daemon.IMAPAddr, mailbox, env.Password)

	msg := smtpMessage("through broker both ways", "e2e-1@contoso.com")
	c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
	if err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader(msg)); err != nil {
		t.Fatalf("sending through broker: %v\n%s", err, env.Daemon.Log())
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	got := w.next(t, env.Daemon.Log)
	if string(got) != msg {
		t.Fatalf("fetched through broker:\n%q\nwant what was sent:\n%q", got, msg)
	}
	sent := env.waitMessages(t, 1)[0]
	if sent.Mailbox != mailbox || sent.From != mailbox || len(sent.To) != 1 || sent.To[0] != mailbox {
		t.Fatalf("upstream recorded mailbox %q from %q to %v, want %s from and to itself", sent.Mailbox, sent.From, sent.To, mailbox)
	}
	size := fmt.Sprint(len(msg))
	logged := []struct {
		line string
		want []string
	}{
		{`msg="session start" proto=smtp`, []string{"remote=127.0.0.1:"}},
		{`msg="message relayed"`, []string{"account=" + mailbox, "from=" + mailbox, "rcpts=1", "bytes=" + size, "reply=", sent.QueueID, "duration="}},
		{`msg="session end" proto=smtp`, []string{"account=" + mailbox, "messages=1", "bytes=" + size, "duration="}},
	}
	for _, l := range logged {
		line := env.Daemon.waitLog(l.line)
		for _, want := range l.want {
			if !strings.Contains(line, want) {
				t.Fatalf("log line %q lacks %q", line, want)
			}
		}
	}
}

// Exchange's replies, as the simulator gives them and broker must relay
// them: code, enhanced code and text unchanged.
var (
	exchangeRecipientNotFound = smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10},
		Message: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}
	exchangeSendAsDenied = smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60},
		Message: "SMTP; Client does not have permissions to send as this sender [SIM0PR01CA0001.namprd01.prod.outlook.com]"}
	exchangeTooManyRecipients = smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
		Message: "Too many recipients"}
)

// checkReply fails unless err is exactly the reply want.
func checkReply(t *testing.T, what string, err error, want smtp.SMTPError) {
	t.Helper()
	code, enh, text := smtpReply(err)
	if code != want.Code || enh != want.EnhancedCode || text != want.Message {
		t.Fatalf("%s: got %d %v %q, want %d %v %q", what, code, enh, text, want.Code, want.EnhancedCode, want.Message)
	}
}

// TestSMTPExchangeReplies runs what Exchange may answer through one daemon:
// refusals relayed unchanged, a connection lost during DATA, and SMTP AUTH
// disabled for the mailbox (last: it stays disabled). Without reuse, so
// that the last login meets Exchange's refusal rather than a connection
// the sessions before it left, logged in.
func TestSMTPExchangeReplies(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{SMTP: m365sim.SMTPOptions{MaxRecipients: 2}, Config: `reuse_idle_timeout = "0s"`})
	t.Run("refusals relayed", func(t *testing.T) { testRefusalsRelayed(t, env) })
	t.Run("upstream lost during DATA", func(t *testing.T) { testUpstreamLostDuringData(t, env) })
	t.Run("SMTP AUTH disabled", func(t *testing.T) { testAuthDisabledForMailbox(t, env) })
}

// testRefusalsRelayed: Exchange's refusals of a sender or of single
// recipients reach the client unchanged, and the recipients it accepted get
// the message.
func testRefusalsRelayed(t *testing.T, env *smtpSimEnv) {
	before := len(env.SMTP.Messages())
	c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)

	checkReply(t, "MAIL FROM another sender", c.Mail("sales@contoso.com", nil), exchangeSendAsDenied)
	if err := c.Reset(); err != nil {
		t.Fatalf("RSET: %v", err)
	}
	if err := c.Mail(mailbox, nil); err != nil {
		t.Fatalf("MAIL FROM the mailbox after a refused sender: %v", err)
	}
	checkReply(t, "RCPT TO an unknown recipient", c.Rcpt("reject.unknown@contoso.com", nil), exchangeRecipientNotFound)
	for _, rcpt := range []string{mailbox, "sales@contoso.com"} {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatalf("RCPT TO:<%s>: %v", rcpt, err)
		}
	}
	checkReply(t, "RCPT TO beyond MaxRecipients", c.Rcpt("third@contoso.com", nil), exchangeTooManyRecipients)
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	msg := smtpMessage("some recipients refused", "partial@contoso.com")
	if _, err := w.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	got := env.waitMessages(t, before+1)[before]
	if string(got.Data) != msg || strings.Join(got.To, ",") != mailbox+",sales@contoso.com" {
		t.Fatalf("upstream got %d bytes to %v, want the message to %s and sales@contoso.com", len(got.Data), got.To, mailbox)
	}
	if want := "OK <" + got.QueueID + "@"; !strings.Contains(resp.StatusText, want) {
		t.Fatalf("end of DATA: got %q, want upstream's reply naming its queue ID (%q)", resp.StatusText, want)
	}
	if line := env.Daemon.waitLog("msg=\"message relayed\""); !strings.Contains(line, "rcpts=2") {
		t.Fatalf("log line %q: want rcpts=2", line)
	}
}

// testAuthDisabledForMailbox: with SMTP AUTH disabled for the mailbox
// (Set-CASMailbox -SmtpClientAuthenticationDisabled $true), the client is
// told at AUTH to come back later, and the log tells the administrator what
// to run.
func testAuthDisabledForMailbox(t *testing.T, env *smtpSimEnv) {
	logins := env.SMTP.Logins()
	env.SMTP.DisableSMTPAuth(mailbox)
	c := dialRawSMTP(t, env.Daemon.SMTPAddr)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH PLAIN "+b64("\x00"+mailbox+"\x00"+env.Password), "454 4.7.0 ")
	if err := env.SMTP.LastAuthError(); !errors.Is(err, m365sim.ErrSMTPAuthDisabled) {
		t.Fatalf("simulator's last AUTH error: got %v, want ErrSMTPAuthDisabled", err)
	}
	line := env.Daemon.waitLog("msg=\"upstream login failed\"")
	for _, want := range []string{"5.7.139", "Set-CASMailbox", "SmtpClientAuthenticationDisabled $false", "account=" + mailbox} {
		if !strings.Contains(line, want) {
			t.Fatalf("log line %q lacks %q", line, want)
		}
	}
	if n := env.SMTP.Logins(); n != logins {
		t.Fatalf("simulator counted %d logins, want still %d", n, logins)
	}
}

// TestSMTPUpstreamLoginProblems: whatever keeps broker from logging in
// upstream, the client learns it at AUTH as a temporary 454 and keeps its
// mail, and the log says what is wrong and what to do.
func TestSMTPUpstreamLoginProblems(t *testing.T) {
	tests := []struct {
		name string
		opts smtpSimOptions
		// before runs ahead of the client's AUTH.
		before func(t *testing.T, env *smtpSimEnv)
		reply  string
		logged []string
		// sim checks what the simulator saw.
		sim func(t *testing.T, env *smtpSimEnv)
	}{
		{
			name:   "upstream offers no STARTTLS",
			opts:   smtpSimOptions{SMTP: m365sim.SMTPOptions{NoSTARTTLS: true}},
			reply:  "454 4.7.0 ",
			logged: []string{"no STARTTLS", "port 465"},
			sim: func(t *testing.T, env *smtpSimEnv) {
				// It would have taken the token in clear text: it never saw
				// one, good or bad.
				if n, err := env.SMTP.Logins(), env.SMTP.LastAuthError(); n != 0 || err != nil {
					t.Fatalf("simulator saw %d logins, last AUTH error %v; want no AUTH at all", n, err)
				}
			},
		},
		{
			name:   "upstream certificate not trusted",
			opts:   smtpSimOptions{UpstreamCA: otherCertPEM(t)},
			reply:  "454 4.7.0 ",
			logged: []string{"certificate"},
			sim: func(t *testing.T, env *smtpSimEnv) {
				if n, err := env.SMTP.Logins(), env.SMTP.LastAuthError(); n != 0 || err != nil {
					t.Fatalf("simulator saw %d logins, last AUTH error %v; want no AUTH at all", n, err)
				}
			},
		},
		{
			name:   "upstream unreachable",
			opts:   smtpSimOptions{Upstream: closedPort(t)},
			reply:  "454 4.7.0 ",
			logged: []string{"connection refused"},
		},
		{
			name:   "app lacks SMTP.SendAsApp",
			opts:   smtpSimOptions{App: func(a *m365sim.App) { a.Roles = []string{"IMAP.AccessAsApp"} }},
			reply:  "454 4.7.0 ",
			logged: []string{"5.7.3", "SMTP.SendAsApp"},
			sim: func(t *testing.T, env *smtpSimEnv) {
				if err := env.SMTP.LastAuthError(); !errors.Is(err, m365sim.ErrTokenNoPermission) {
					t.Fatalf("simulator's last AUTH error: got %v, want ErrTokenNoPermission", err)
				}
			},
		},
		{
			// Another client of the mailbox uses Exchange's last connection.
			name: "Exchange's connection limit reached",
			opts: smtpSimOptions{SMTP: m365sim.SMTPOptions{MaxConnectionsPerMailbox: 1}},
			before: func(t *testing.T, env *smtpSimEnv) {
				dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
			},
			reply:  "454 4.3.2 ",
			logged: []string{"4.3.2", "max_connections_per_mailbox"},
			sim: func(t *testing.T, env *smtpSimEnv) {
				if err := env.SMTP.LastAuthError(); !errors.Is(err, m365sim.ErrSMTPThreadLimit) {
					t.Fatalf("simulator's last AUTH error: got %v, want ErrSMTPThreadLimit", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newSMTPSimEnv(t, tt.opts)
			if tt.before != nil {
				tt.before(t, env)
			}
			c := dialRawSMTP(t, env.Daemon.SMTPAddr)
			c.cmd("EHLO client.test", "250 ")
			c.cmd("AUTH PLAIN "+b64("\x00"+mailbox+"\x00"+env.Password), tt.reply)
			// The client keeps its mail: no MAIL is taken without a login.
			c.cmd("MAIL FROM:<"+mailbox+">", "530 5.7.0 ")
			line := env.Daemon.waitLog(`msg="upstream login failed"`)
			for _, want := range tt.logged {
				if !strings.Contains(line, want) {
					t.Fatalf("log line %q lacks %q", line, want)
				}
			}
			if tt.sim != nil {
				tt.sim(t, env)
			}
		})
	}
}

// otherCertPEM is a certificate that did not sign the simulator's.
func otherCertPEM(t *testing.T) []byte {
	t.Helper()
	cert, err := m365sim.NewCert("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return cert.CertPEM
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// testUpstreamLostDuringData: when upstream's connection ends during DATA,
// or after the final dot before its reply, the client gets a 4xx and keeps
// its message; the next message of the same session goes through.
func testUpstreamLostDuringData(t *testing.T, env *smtpSimEnv) {
	tests := []struct {
		name       string
		afterBytes int64
		size       int
	}{
		{"mid-message", 64 << 10, 1 << 20},
		{"after the final dot", 1 << 40, 4 << 10},
	}
	sent := len(env.SMTP.Messages())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
			env.SMTP.DropNextData(tt.afterBytes)
			msg := "Subject: dropped\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", tt.size/80)
			err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader(msg))
			code, enh, text := smtpReply(err)
			if code != 451 || enh != (smtp.EnhancedCode{4, 4, 2}) {
				t.Fatalf("message cut off upstream: got %d %v %q, want 451 4.4.2", code, enh, text)
			}
			if n := len(env.SMTP.Messages()); n != sent {
				t.Fatalf("upstream recorded %d messages, want %d", n, sent)
			}
			// The session reconnects upstream for its next message.
			if err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader(msg)); err != nil {
				t.Fatalf("next message in the same session: %v\n%s", err, env.Daemon.Log())
			}
			sent++
			if got := env.waitMessages(t, sent)[sent-1]; got.Size != int64(len(msg)) {
				t.Fatalf("upstream got %d bytes, want %d", got.Size, len(msg))
			}
		})
	}
	env.Daemon.waitLog("upstream failed during DATA")
}

// TestSMTPUnauthenticatedAs: with allow_unauthenticated_as, a loopback
// client sends without AUTH (curl without -u) as that mailbox, and only as
// it; a client on another address still has to AUTH.
func TestSMTPUnauthenticatedAs(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{Config: `listen = ["0.0.0.0:0"]
allow_unauthenticated_as = "` + mailbox + `"`})
	_, port, _ := net.SplitHostPort(env.Daemon.SMTPAddr)
	loopback := net.JoinHostPort("127.0.0.1", port)

	t.Run("curl without AUTH", func(t *testing.T) {
		msg := smtpMessage("scanner", "scanner-1@contoso.com")
		file := writeFile(t, t.TempDir(), "scan.eml", []byte(msg))
		out := runClient(t, "curl", "-sS", "-v", "--max-time", "30", "smtp://"+loopback,
			"--mail-from", mailbox, "--mail-rcpt", mailbox, "--upload-file", file)
		if strings.Contains(out, "> AUTH") {
			t.Fatalf("curl authenticated; the test wants it not to:\n%s", out)
		}
		got := env.waitMessages(t, 1)[0]
		if got.Mailbox != mailbox || got.From != mailbox || string(got.Data) != msg {
			t.Fatalf("upstream got %d bytes from %q logged in as %q, want the message from and as %s", len(got.Data), got.From, got.Mailbox, mailbox)
		}
	})
	t.Run("another sender", func(t *testing.T) {
		c := dialRawSMTP(t, loopback)
		c.cmd("EHLO scanner.test", "250 ")
		c.cmd("MAIL FROM:<sales@contoso.com>", "550 5.7.60 ")
	})
	t.Run("AUTH is still checked", func(t *testing.T) {
		c := dialRawSMTP(t, loopback)
		c.cmd("EHLO scanner.test", "250 ")
		c.cmd("AUTH PLAIN "+b64("\x00"+mailbox+"\x00wrong-password-wrong-password-xx"), "535 5.7.8 ")
	})
	t.Run("not from off loopback", func(t *testing.T) {
		ip := nonLoopbackIP(t)
		c := dialRawSMTP(t, net.JoinHostPort(ip.String(), port))
		c.cmd("EHLO elsewhere.test", "250 ")
		c.cmd("MAIL FROM:<"+mailbox+">", "530 5.7.0 ")
	})
	if n := len(env.SMTP.Messages()); n != 1 {
		t.Fatalf("upstream got %d messages, want 1", n)
	}
}

// nonLoopbackIP returns an IPv4 address of this host that is not loopback.
// A host with none (a bare container) gets a documentation address on lo
// for the test's duration: the daemon sees it as off loopback all the same.
func nonLoopbackIP(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP
		}
	}
	const extra = "198.51.100.7"
	if out, err := exec.Command("ip", "addr", "add", extra+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("no non-loopback IPv4 address, and adding %s to lo failed: %v\n%s", extra, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "addr", "del", extra+"/32", "dev", "lo").Run() })
	return net.ParseIP(extra)
}
