package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/mailbroker/broker/test/m365sim"
)

// runClientResult runs a client program that may fail and returns its
// combined output and exit code.
func runClientResult(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is not installed: run `make deps` (see .ci/deps)", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: did not finish within %v\n%s", name, strings.Join(args, " "), clientTimeout, out)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out), 0
}

// checkRelayed waits for the simulator's n-th message and compares it with
// what the client sent.
func checkRelayed(t *testing.T, env *smtpSimEnv, n int, msg string, to ...string) {
	t.Helper()
	got := env.waitMessages(t, n)[n-1]
	if string(got.Data) != msg {
		t.Fatalf("upstream got message\n%q\nwant\n%q", got.Data, msg)
	}
	if got.Mailbox != mailbox || got.From != mailbox || strings.Join(got.To, ",") != strings.Join(to, ",") {
		t.Fatalf("upstream got mailbox %q from %q to %v, want %s from itself to %v", got.Mailbox, got.From, got.To, mailbox, to)
	}
}

// TestSMTPRealClients sends through broker with curl, Python's smtplib and
// swaks, each with AUTH PLAIN and AUTH LOGIN.
func TestSMTPRealClients(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{})
	t.Run("curl", func(t *testing.T) { testCurl(t, env) })
	t.Run("smtplib", func(t *testing.T) { testPythonSmtplib(t, env) })
	t.Run("swaks", func(t *testing.T) { testSwaks(t, env) })
}

// testCurl sends with curl, which picks AUTH PLAIN, and with AUTH LOGIN
// forced; a wrong password is refused with 535 5.7.8, and no password at
// all with 530 5.7.0 at MAIL.
func testCurl(t *testing.T, env *smtpSimEnv) {
	dir := t.TempDir()
	sent := len(env.SMTP.Messages())
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		t.Run(mech, func(t *testing.T) {
			msg := smtpMessage("curl "+mech, "curl-"+mech+"@contoso.com")
			file := writeFile(t, dir, "msg-"+mech+".eml", []byte(msg))
			args := []string{"-sS", "-v", "--max-time", "30",
				"smtp://" + env.Daemon.SMTPAddr,
				"--mail-from", mailbox, "--mail-rcpt", mailbox,
				"-u", mailbox + ":" + env.Password, "--upload-file", file}
			if mech == "LOGIN" {
				args = append(args, "--login-options", "AUTH=LOGIN")
			}
			out := runClient(t, "curl", args...)
			if !strings.Contains(out, "> AUTH "+mech) {
				t.Fatalf("curl did not use AUTH %s:\n%s", mech, out)
			}
			// curl prints the end of DATA's reply: upstream's, queue ID included.
			if !strings.Contains(out, "< 250 2.0.0 OK <SIM0PR01MB0001") {
				t.Fatalf("curl output lacks upstream's 250 with its queue ID:\n%s", out)
			}
			sent++
			checkRelayed(t, env, sent, msg, mailbox)
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		file := writeFile(t, dir, "msg.eml", []byte(smtpMessage("refused", "curl-refused@contoso.com")))
		out, code := runClientResult(t, "curl", "-sS", "-v", "--max-time", "30",
			"smtp://"+env.Daemon.SMTPAddr, "--mail-from", mailbox, "--mail-rcpt", mailbox,
			"-u", mailbox+":wrong-password-wrong-password-xx", "--upload-file", file)
		// 67: CURLE_LOGIN_DENIED.
		if code != 67 || !strings.Contains(out, "< 535 5.7.8 ") {
			t.Fatalf("curl exited %d with\n%s\nwant 67 after 535 5.7.8", code, out)
		}
	})
	t.Run("without AUTH", func(t *testing.T) {
		file := writeFile(t, dir, "msg.eml", []byte(smtpMessage("refused", "curl-refused@contoso.com")))
		out, code := runClientResult(t, "curl", "-sS", "-v", "--max-time", "30",
			"smtp://"+env.Daemon.SMTPAddr, "--mail-from", mailbox, "--mail-rcpt", mailbox, "--upload-file", file)
		if code == 0 || !strings.Contains(out, "< 530 5.7.0 ") {
			t.Fatalf("curl exited %d with\n%s\nwant a failure after 530 5.7.0", code, out)
		}
	})
	if n := len(env.SMTP.Messages()); n != sent {
		t.Fatalf("upstream got %d messages, want %d", n, sent)
	}
}

// smtplibScript sends one message with Python's smtplib and prints what
// happened as JSON. mech "login" is smtp.login() (AUTH PLAIN); "LOGIN" and
// "LOGIN-no-ir" force AUTH LOGIN with and without an initial response.
const smtplibScript = `
import json, smtplib, sys
addr, user, password, mech, rcpts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split(",")
msg = sys.stdin.buffer.read()
host, port = addr.rsplit(":", 1)
s = smtplib.SMTP(host, int(port), timeout=30)
s.set_debuglevel(1)
result = {}
try:
    s.ehlo("client.test")
    if mech == "login":
        s.login(user, password)
    else:
        s.user, s.password = user, password
        code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=(mech == "LOGIN"))
    result["refused"] = {k: [c, m.decode()] for k, (c, m) in s.sendmail(user, rcpts, msg).items()}
    s.quit()
except smtplib.SMTPAuthenticationError as e:
    result["auth_error"] = [e.smtp_code, e.smtp_error.decode()]
except smtplib.SMTPRecipientsRefused as e:
    result["all_refused"] = {k: [c, m.decode()] for k, (c, m) in e.recipients.items()}
print("RESULT " + json.dumps(result))
`

type smtplibResult struct {
	Refused    map[string][2]any `json:"refused"`
	AuthError  *[2]any           `json:"auth_error"`
	AllRefused map[string][2]any `json:"all_refused"`
	transcript string
}

func runSmtplib(t *testing.T, addr, password, mech string, msg string, rcpts ...string) smtplibResult {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is not installed: run `make deps` (see .ci/deps)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", "-c", smtplibScript, addr, mailbox, password, mech, strings.Join(rcpts, ","))
	cmd.Stdin = strings.NewReader(msg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	_, js, ok := strings.Cut(string(out), "RESULT ")
	var r smtplibResult
	if !ok || json.Unmarshal([]byte(js), &r) != nil {
		t.Fatalf("smtplib printed no result:\n%s", out)
	}
	r.transcript = string(out)
	return r
}

// testPythonSmtplib sends with smtplib's login() (AUTH PLAIN) and with AUTH
// LOGIN forced, with and without an initial response. A refused recipient
// reaches smtplib with upstream's reply while the other one gets the
// message; a wrong password is refused with 535 5.7.8.
func testPythonSmtplib(t *testing.T, env *smtpSimEnv) {
	before := len(env.SMTP.Messages())
	const rejected = "reject.me@contoso.com"
	tests := []struct {
		mech, sent string
	}{
		{"login", "send: 'AUTH PLAIN "},
		{"LOGIN", "send: 'AUTH LOGIN "},
		{"LOGIN-no-ir", "send: 'AUTH LOGIN\\r\\n'"},
	}
	for i, tt := range tests {
		t.Run(tt.mech, func(t *testing.T) {
			msg := smtpMessage("smtplib "+tt.mech, fmt.Sprintf("smtplib-%d@contoso.com", i))
			r := runSmtplib(t, env.Daemon.SMTPAddr, env.Password, tt.mech, msg, rejected, mailbox)
			if !strings.Contains(r.transcript, tt.sent) {
				t.Fatalf("smtplib transcript lacks %q:\n%s", tt.sent, r.transcript)
			}
			want := [2]any{550.0, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}
			if len(r.Refused) != 1 || r.Refused[rejected] != want {
				t.Fatalf("smtplib refused recipients: got %v, want only %s with %v\n%s", r.Refused, rejected, want, r.transcript)
			}
			checkRelayed(t, env, before+i+1, msg, mailbox)
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		r := runSmtplib(t, env.Daemon.SMTPAddr, "wrong-password-wrong-password-xx", "login", "Subject: x\r\n\r\nx\r\n", mailbox)
		if want := [2]any{535.0, "5.7.8 Authentication credentials invalid"}; r.AuthError == nil || *r.AuthError != want {
			t.Fatalf("smtplib with a wrong password: got %v, want SMTPAuthenticationError %v\n%s", r.AuthError, want, r.transcript)
		}
	})
	if n := len(env.SMTP.Messages()); n != before+len(tests) {
		t.Fatalf("upstream got %d messages, want %d", n, before+len(tests))
	}
}

// testSwaks sends with swaks using AUTH LOGIN and AUTH PLAIN.
func testSwaks(t *testing.T, env *smtpSimEnv) {
	before := len(env.SMTP.Messages())
	host, port, _ := strings.Cut(env.Daemon.SMTPAddr, ":")
	dir := t.TempDir()
	for i, mech := range []string{"LOGIN", "PLAIN"} {
		t.Run(mech, func(t *testing.T) {
			msg := smtpMessage("swaks "+mech, "swaks-"+mech+"@contoso.com")
			// swaks ends DATA with CRLF "." CRLF after the data as it is.
			file := writeFile(t, dir, "msg-"+mech+".eml", []byte(strings.TrimSuffix(msg, "\r\n")))
			out := runClient(t, "swaks", "--server", host, "--port", port,
				"--auth", mech, "--auth-user", mailbox, "--auth-password", env.Password,
				"--from", mailbox, "--to", mailbox, "--data", "@"+file, "--timeout", "30")
			for _, want := range []string{"-> AUTH " + mech, "<-  235 2.0.0 ", "<-  250 2.0.0 OK <SIM0PR01MB0001"} {
				if !strings.Contains(out, want) {
					t.Fatalf("swaks transcript lacks %q:\n%s", want, out)
				}
			}
			checkRelayed(t, env, before+i+1, msg, mailbox)
		})
	}
}

// TestSMTPLocalTLS: with a local certificate, curl sends through broker
// with STARTTLS on the plain listener and over the implicit-TLS listener.
func TestSMTPLocalTLS(t *testing.T) {
	dir := t.TempDir()
	cert, err := m365sim.NewCert("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	certFile := writeFile(t, dir, "local.crt", cert.CertPEM)
	keyFile := writeFile(t, dir, "local.key", cert.KeyPEM)
	env := newSMTPSimEnv(t, smtpSimOptions{Config: fmt.Sprintf(
		"listen_tls = [\"127.0.0.1:0\"]\ntls_cert_file = %q\ntls_key_file = %q", certFile, keyFile)})
	var tlsAddr string
	for _, m := range listeningRE.FindAllStringSubmatch(env.Daemon.Log(), -1) {
		if m[1] == "smtp" && m[2] != env.Daemon.SMTPAddr {
			tlsAddr = m[2]
		}
	}
	if tlsAddr == "" {
		t.Fatalf("daemon logged no second SMTP listener\n%s", env.Daemon.Log())
	}
	tests := []struct {
		name, url, sent string
		extra           []string
	}{
		{"STARTTLS", "smtp://" + env.Daemon.SMTPAddr, "> STARTTLS", []string{"--ssl-reqd"}},
		{"implicit TLS", "smtps://" + tlsAddr, "> EHLO", nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := smtpMessage("curl over "+tt.name, fmt.Sprintf("tls-%d@contoso.com", i))
			file := writeFile(t, dir, "msg.eml", []byte(msg))
			args := append([]string{"-sS", "-v", "--max-time", "30", "--cacert", certFile, tt.url,
				"--mail-from", mailbox, "--mail-rcpt", mailbox,
				"-u", mailbox + ":" + env.Password, "--upload-file", file}, tt.extra...)
			out := runClient(t, "curl", args...)
			if !strings.Contains(out, tt.sent) || !strings.Contains(out, "SSL connection using TLS") {
				t.Fatalf("curl did not speak TLS (%q):\n%s", tt.sent, out)
			}
			checkRelayed(t, env, i+1, msg, mailbox)
		})
	}
	// The implicit-TLS session says so from its start.
	if line := env.Daemon.waitLog("tls=true"); !strings.Contains(line, `msg="session start" proto=smtp`) {
		t.Fatalf("log line %q: want the implicit-TLS session's start", line)
	}
}
