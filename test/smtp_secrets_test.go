package test

import (
	"strings"
	"testing"

	"github.com/mailbroker/broker/test/m365sim"
)

// TestNoSecretInSMTPLog runs SMTP sessions that succeed and fail in every
// way that logs something (wrong password, malformed AUTH, upstream
// refusing the token with an XOAUTH2 error challenge), then stops the daemon
// and looks for the app password, the client secret and any access token
// in its log, in clear and in the base64 the client sent them in.
func TestNoSecretInSMTPLog(t *testing.T) {
	// Without reuse, so that the last login meets Exchange's refusal rather
	// than the connection the sessions before it left, logged in.
	env := newSMTPSimEnv(t, smtpSimOptions{SMTP: m365sim.SMTPOptions{ErrorChallenge: true}, Config: `reuse_idle_timeout = "0s"`})
	const wrong = "wrong-password-wrong-password-xx"
	addr := env.Daemon.SMTPAddr

	c := dialRawSMTP(t, addr)
	c.login(mailbox, env.Password)
	c.cmd("MAIL FROM:<"+mailbox+">", "250 ")
	c.cmd("RCPT TO:<"+mailbox+">", "250 ")
	c.cmd("DATA", "354 ")
	c.cmd("Subject: secrets\r\n\r\nnone here\r\n.", "250 ")
	c.cmd("QUIT", "221 ")

	c = dialRawSMTP(t, addr)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH LOGIN", "334 ")
	c.cmd(b64(mailbox), "334 ")
	c.cmd(b64(env.Password), "235 ")
	c.cmd("QUIT", "221 ")

	c = dialRawSMTP(t, addr)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH PLAIN "+b64("\x00"+mailbox+"\x00"+wrong), "535 ")
	c.cmd("AUTH PLAIN "+b64(mailbox+"\x00"+env.Password), "501 ")
	c.cmd("AUTH LOGIN "+b64(mailbox), "334 ")
	c.cmd("!"+env.Password, "454 ")

	// Exchange refuses the token: the log explains, with upstream's reply
	// and its error challenge.
	env.SMTP.DisableSMTPAuth(mailbox)
	c = dialRawSMTP(t, addr)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH PLAIN "+b64("\x00"+mailbox+"\x00"+env.Password), "454 4.7.0 ")
	if line := env.Daemon.waitLog(`msg="upstream login failed"`); !strings.Contains(line, "5.7.139") {
		t.Fatalf("log line %q lacks upstream's reply", line)
	}
	env.Daemon.stop()

	log := env.Daemon.Log()
	if !strings.Contains(log, `msg="message relayed"`) || !strings.Contains(log, `msg="login failed"`) {
		t.Fatalf("the log lacks the sessions above; the scan below would prove nothing:\n%s", log)
	}
	secrets := map[string]string{
		"app password":                env.Password,
		"app password in base64":      b64(env.Password),
		"AUTH PLAIN response":         b64("\x00" + mailbox + "\x00" + env.Password),
		"wrong password":              wrong,
		"wrong AUTH PLAIN response":   b64("\x00" + mailbox + "\x00" + wrong),
		"client secret":               env.Secret,
		"access token (a JWT)":        "eyJ",
		"XOAUTH2 response (base64)":   b64("user=" + mailbox + "\x01auth=Bearer "),
		"XOAUTH2 response (in clear)": "auth=Bearer",
	}
	for what, secret := range secrets {
		if strings.Contains(log, secret) {
			t.Errorf("the daemon's log contains the %s", what)
		}
	}
}
