package test

import (
	"strings"
	"testing"
)

// smtpStep is a line sent and the start of the reply it must get; closed
// means the server must then end the connection.
type smtpStep struct {
	send   string
	want   string
	closed bool
}

// TestSMTPMalformedInput feeds the SMTP listener what broken or hostile
// clients send, over raw TCP, and checks the replies, that nothing was
// relayed, and that the daemon goes on serving.
func TestSMTPMalformedInput(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{})
	addr := env.Daemon.SMTPAddr
	plain := func(user, password string) string { return "AUTH PLAIN " + b64("\x00"+user+"\x00"+password) }
	const wrong = "wrong-password-wrong-password-xx"
	tests := []struct {
		name  string
		login bool // AUTH before the steps
		steps []smtpStep
	}{
		{"unknown command", false, []smtpStep{{send: "FOOO bar", want: "500 5.5.2 "}}},
		{"long unknown command", false, []smtpStep{{send: "FROBNICATE now", want: "501 5.5.2 "}}},
		{"garbage bytes", false, []smtpStep{{send: "\x00\xff\xfe garbage", want: "501 5.5.2 "}}},
		{"MAIL before EHLO", false, []smtpStep{{send: "MAIL FROM:<" + mailbox + ">", want: "502 5.5.1 "}}},
		{"bad MAIL syntax", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: "MAIL TO:<" + mailbox + ">", want: "501 5.5.2 "}}},
		{"RCPT without MAIL", true, []smtpStep{{send: "RCPT TO:<" + mailbox + ">", want: "502 5.5.1 "}}},
		{"DATA without RCPT", true, []smtpStep{{send: "MAIL FROM:<" + mailbox + ">", want: "250 "}, {send: "DATA", want: "502 5.5.1 "}}},
		{"MAIL without AUTH", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: "MAIL FROM:<" + mailbox + ">", want: "530 5.7.0 "}}},
		{"unsupported mechanism", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: "AUTH CRAM-MD5", want: "504 5.7.4 "}}},
		{"bad base64 initial response", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: "AUTH PLAIN !!!not-base64!!!", want: "454 4.7.0 "}}},
		{"bad base64 continuation", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: "AUTH LOGIN", want: "334 "}, {send: "%%%", want: "454 4.7.0 "}}},
		{"cancelled AUTH", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: "AUTH PLAIN", want: "334 "}, {send: "*", want: "501 "}}},
		{"PLAIN without NULs", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: "AUTH PLAIN " + b64("just-a-string"), want: "501 5.5.2 "}}},
		{"wrong password", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: plain(mailbox, wrong), want: "535 5.7.8 "}}},
		{"unknown user", false, []smtpStep{{send: "EHLO client.test", want: "250 "}, {send: plain("nobody@contoso.com", env.Password), want: "535 5.7.8 "}}},
		{"third failed AUTH closes", false, []smtpStep{
			{send: "EHLO client.test", want: "250 "},
			{send: plain(mailbox, wrong), want: "535 5.7.8 "},
			{send: plain(mailbox, wrong), want: "535 5.7.8 "},
			{send: plain(mailbox, wrong), want: "421 4.7.0 ", closed: true},
		}},
		{"overlong command line", false, []smtpStep{{send: "EHLO " + strings.Repeat("x", 70000), want: "500 5.4.0 ", closed: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRawSMTP(t, addr)
			if tt.login {
				c.login(mailbox, env.Password)
			}
			for _, s := range tt.steps {
				c.cmd(s.send, s.want)
				if s.closed && !c.closed() {
					t.Fatalf("after %.40q: connection still open, want it closed", s.send)
				}
			}
		})
	}
	if n := len(env.SMTP.Messages()); n != 0 {
		t.Fatalf("upstream accepted %d messages, want none", n)
	}
	t.Run("bare LF cannot smuggle", func(t *testing.T) { testBareLFCannotSmuggle(t, env) })
	// The daemon survived all of it.
	c := dialSMTP(t, addr, mailbox, env.Password)
	if err := c.SendMail(mailbox, []string{mailbox}, strings.NewReader("Subject: still here\r\n\r\nok\r\n")); err != nil {
		t.Fatalf("sending after malformed input: %v\n%s", err, env.Daemon.Log())
	}
	env.waitMessages(t, 2)
	if log := env.Daemon.Log(); strings.Contains(log, "panic") {
		t.Fatalf("daemon log mentions a panic:\n%s", log)
	}
}

// testBareLFCannotSmuggle: a lone LF never ends DATA, so commands inside a
// message stay message text and upstream gets one message, to the one
// recipient given. The simulator must have no message before.
func testBareLFCannotSmuggle(t *testing.T, env *smtpSimEnv) {
	c := dialRawSMTP(t, env.Daemon.SMTPAddr)
	c.login(mailbox, env.Password)
	c.cmd("MAIL FROM:<"+mailbox+">", "250 ")
	c.cmd("RCPT TO:<"+mailbox+">", "250 ")
	c.cmd("DATA", "354 ")
	c.send("Subject: one\r\n\r\nbody\n.\nMAIL FROM:<" + mailbox + ">\nRCPT TO:<evil@example.org>\nDATA\nsmuggled\n.\r\nRSET\r\n")
	c.cmd(".", "250 2.0.0 OK <SIM0PR01MB0001")
	c.cmd("QUIT", "221 ")
	// broker answers the final dot only with upstream's reply, so a
	// smuggled message would have been relayed before the 250.

	msgs := env.SMTP.Messages()
	if len(msgs) != 1 {
		t.Fatalf("upstream accepted %d messages, want 1", len(msgs))
	}
	want := "Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<" + mailbox + ">\r\nRCPT TO:<evil@example.org>\r\nDATA\r\nsmuggled\r\n.\r\nRSET\r\n"
	if got := msgs[0]; string(got.Data) != want || len(got.To) != 1 || got.To[0] != mailbox {
		t.Fatalf("upstream got %q to %v, want %q to %s only", got.Data, got.To, want, mailbox)
	}
}
