package test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/test/m365sim"
)

// checkGraphSent compares a message Graph sent with the generated one.
func checkGraphSent(t testing.TB, got m365sim.GraphMessage, m *mimeMessage, rcpts ...string) {
	t.Helper()
	if got.Mailbox != mailbox || got.Subject != m.Subject || got.MessageID != "<"+m.MessageID+">" {
		t.Fatalf("Graph sent %q %q from %s, want %q %q from %s", got.Subject, got.MessageID, got.Mailbox, m.Subject, m.MessageID, mailbox)
	}
	if strings.TrimRight(got.TextBody, "\r\n") != m.Body {
		t.Fatalf("Graph sent the body %q, want %q", got.TextBody, m.Body)
	}
	if len(got.Attachments) != len(m.Sums) {
		t.Fatalf("Graph sent %d attachments, want %d", len(got.Attachments), len(m.Sums))
	}
	// Graph lists the attachments that came in the MIME draft first, then
	// those uploaded.
	for i, sum := range m.Sums {
		name := fmt.Sprintf("part%d.bin", i)
		j := slices.IndexFunc(got.Attachments, func(a m365sim.GraphAttachment) bool { return a.Name == name })
		if j < 0 || got.Attachments[j].SHA256 != sum {
			t.Fatalf("attachment %s missing or changed (want SHA-256 %x); Graph has %+v", name, sum, got.Attachments)
		}
	}
	want := slices.Clone(rcpts)
	slices.Sort(want)
	have := slices.Clone(got.Recipients)
	slices.Sort(have)
	if !slices.Equal(have, want) {
		t.Fatalf("Graph delivered to %v, want %v", have, want)
	}
}

func messageBytes(t testing.TB, m *mimeMessage) []byte {
	t.Helper()
	b, err := io.ReadAll(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGraphClients sends a 100 KB message through broker to Microsoft
// Graph with curl, swaks and Python's smtplib; Graph gets subject,
// Message-ID, body and attachment intact, with one sendMail.
func TestGraphClients(t *testing.T) {
	env := newGraphEnv(t, graphEnvOptions{})
	dir := t.TempDir()
	host, port, _ := strings.Cut(env.Daemon.SMTPAddr, ":")
	n := 0
	for _, client := range []string{"curl", "swaks", "smtplib"} {
		t.Run(client, func(t *testing.T) {
			m := newMIMEMessage(mailbox, []string{colleague}, nil, client+" through Graph", client+"-graph@contoso.com", "Hello from "+client+".", 70<<10)
			data := messageBytes(t, m)
			if len(data) < 95<<10 {
				t.Fatalf("message of %d bytes, want about 100 KB", len(data))
			}
			file := writeFile(t, dir, client+".eml", data)
			switch client {
			case "curl":
				out := runClient(t, "curl", "-sS", "-v", "smtp://"+env.Daemon.SMTPAddr, "--user", mailbox+":"+env.Password,
					"--mail-from", mailbox, "--mail-rcpt", colleague, "--upload-file", file)
				if !strings.Contains(out, "< 250 2.0.0 OK <") || !strings.Contains(out, "sent through Microsoft Graph") {
					t.Fatalf("curl transcript lacks Graph's 250:\n%s", out)
				}
			case "swaks":
				out := runClient(t, "swaks", "--server", host, "--port", port, "--auth", "LOGIN", "--auth-user", mailbox,
					"--auth-password", env.Password, "--from", mailbox, "--to", colleague,
					"--data", "@"+writeFile(t, dir, "swaks-data.eml", bytes.TrimSuffix(data, []byte("\r\n"))), "--timeout", "60")
				if !strings.Contains(out, "<-  250 2.0.0 OK <") {
					t.Fatalf("swaks transcript lacks Graph's 250:\n%s", out)
				}
			case "smtplib":
				r := runSmtplib(t, env.Daemon.SMTPAddr, env.Password, "login", string(data), colleague)
				if len(r.Refused) != 0 || !strings.Contains(r.transcript, "sent through Microsoft Graph") {
					t.Fatalf("smtplib: refused %v\n%s", r.Refused, r.transcript)
				}
			}
			n++
			got := env.waitSent(t, n)[n-1]
			checkGraphSent(t, got, m, colleague)
			if got.Via != m365sim.GraphSendMail || !got.SaveToSentItems {
				t.Fatalf("sent via %s (saved %v), want sendMail saved to Sent Items", got.Via, got.SaveToSentItems)
			}
		})
	}
	line := env.Daemon.waitLog(`msg="message relayed"`)
	for _, want := range []string{"via=graph", "graph_request_id=", "rcpts=1", "graph_mode=sendMail", "duration="} {
		if !strings.Contains(line, want) {
			t.Fatalf("log line %q lacks %q", line, want)
		}
	}
	if got := env.Graph.SentItems(mailbox); got != 3 {
		t.Fatalf("Sent Items holds %d messages, want 3", got)
	}
}

// TestGraphEnvelope: the SMTP envelope decides who receives. Header To
// and Cc addresses that are recipients keep their place, envelope-only
// recipients get it as Bcc, and a Cc of the header that was no RCPT gets
// nothing.
func TestGraphEnvelope(t *testing.T) {
	env := newGraphEnv(t, graphEnvOptions{})
	w := watchInbox(t, env.Daemon.IMAPAddr, mailbox, env.Password)
	m := newMIMEMessage(mailbox, []string{"Colleague <" + colleague + ">", mailbox}, []string{headerOnly}, "envelope", "envelope-1@contoso.com", "Who gets this?")
	c := dialRawSMTP(t, env.Daemon.SMTPAddr)
	c.login(mailbox, env.Password)
	if reply := sendRaw(t, c, mailbox, []string{colleague, mailbox, bccOnly, outsider}, m, time.Minute); !strings.HasPrefix(reply, "250 2.0.0 OK <") {
		t.Fatalf("end of DATA: %q\n%s", reply, env.Daemon.Log())
	}
	got := env.waitSent(t, 1)[0]
	checkGraphSent(t, got, m, colleague, mailbox, bccOnly, strings.ToLower(outsider))
	if got.Via != m365sim.GraphSend || !slices.Equal(got.To, []string{colleague, mailbox}) || len(got.Cc) != 0 ||
		!slices.Equal(got.Bcc, []string{bccOnly, outsider}) {
		t.Fatalf("Graph sent via %s To %v Cc %v Bcc %v", got.Via, got.To, got.Cc, got.Bcc)
	}
	// The account's own copy, read back through broker's IMAP.
	fetched := string(w.next(t, env.Daemon.Log))
	for _, want := range []string{"Subject: envelope", "Message-ID: <envelope-1@contoso.com>", "Who gets this?"} {
		if !strings.Contains(fetched, want) {
			t.Fatalf("the message in INBOX lacks %q:\n%.2000s", want, fetched)
		}
	}
	if strings.Contains(fetched, headerOnly) || strings.Contains(fetched, bccOnly) {
		t.Fatalf("the delivered message names %s or %s:\n%.2000s", headerOnly, bccOnly, fetched)
	}
	if env.Graph.Drafts(mailbox) != 0 {
		t.Fatalf("a draft was left behind")
	}
}

// TestGraphThrottling: a 429 with Retry-After is waited out, and five
// concurrent messages of one mailbox never make more than four concurrent
// Graph requests; a Graph that allows only three (another client of the
// app holds one) answers the fourth with 429, which is retried. Nothing
// is lost.
func TestGraphThrottling(t *testing.T) {
	env := newGraphEnv(t, graphEnvOptions{Graph: m365sim.GraphOptions{MaxConcurrent: 3}})
	env.Graph.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 429, RetryAfter: 2 * time.Second})
	start := time.Now()
	c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
	msg := string(messageBytes(t, newMIMEMessage(mailbox, []string{colleague}, nil, "throttled", "throttled@contoso.com", "x")))
	if err := c.SendMail(mailbox, []string{colleague}, strings.NewReader(msg)); err != nil {
		t.Fatalf("after a 429: %v\n%s", err, env.Daemon.Log())
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("sent %v after a 429 with Retry-After: 2", d)
	}
	env.waitSent(t, 1)

	release := env.Graph.Hold(m365sim.GraphSendMail)
	const senders = 5
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(env.Daemon.SMTPAddr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Auth(saslPlain(mailbox, env.Password)); err != nil {
				errs <- err
				return
			}
			m := newMIMEMessage(mailbox, []string{colleague}, nil, fmt.Sprintf("concurrent %d", i), fmt.Sprintf("concurrent-%d@contoso.com", i), "x")
			errs <- c.SendMail(mailbox, []string{colleague}, m)
		}()
	}
	ctx := testContext(t, smtpWait)
	if err := env.Graph.WaitHeld(ctx, 3); err != nil {
		t.Fatalf("3 requests held: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // the 4th gets its 429 and waits; the 5th waits in broker
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a concurrent message: %v\n%s", err, env.Daemon.Log())
		}
	}
	sent := env.waitSent(t, 1+senders)
	subjects := map[string]bool{}
	for _, m := range sent {
		subjects[m.Subject] = true
	}
	if len(subjects) != 1+senders {
		t.Fatalf("Graph sent %d distinct messages, want %d", len(subjects), 1+senders)
	}
	if got := env.Graph.MaxConcurrent(mailbox); got > 3 {
		t.Fatalf("Graph saw %d concurrent requests, want at most 3", got)
	}
	if !strings.Contains(env.Daemon.Log(), "graph_retries=") {
		t.Fatalf("no message was retried:\n%s", env.Daemon.Log())
	}
}

// TestGraphConcurrencyCap: without throttling by Graph, broker itself
// keeps a mailbox at four concurrent Graph requests.
func TestGraphConcurrencyCap(t *testing.T) {
	env := newGraphEnv(t, graphEnvOptions{Graph: m365sim.GraphOptions{MaxConcurrent: 10}})
	release := env.Graph.Hold(m365sim.GraphSendMail)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(env.Daemon.SMTPAddr)
			if err != nil {
				return
			}
			defer c.Close()
			if c.Auth(saslPlain(mailbox, env.Password)) != nil {
				return
			}
			c.SendMail(mailbox, []string{colleague}, newMIMEMessage(mailbox, []string{colleague}, nil, fmt.Sprint("cap ", i), fmt.Sprintf("cap-%d@contoso.com", i), "x"))
		}()
	}
	if err := env.Graph.WaitHeld(testContext(t, smtpWait), 4); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := env.Graph.InFlight(mailbox); got != 4 {
		t.Fatalf("%d Graph requests in flight, want 4", got)
	}
	release()
	wg.Wait()
	env.waitSent(t, 6)
	if got := env.Graph.MaxConcurrent(mailbox); got != 4 {
		t.Fatalf("Graph saw at most %d concurrent requests, want 4", got)
	}
}

// TestGraphErrors: each of Graph's refusals reaches the client as the
// right reply and the log with the administrator's fix.
func TestGraphErrors(t *testing.T) {
	tests := []struct {
		name    string
		roles   []string
		setup   func(*graphEnv)
		from    string
		code    int
		ec      smtp.EnhancedCode
		advice  string
		atLogin bool
	}{
		{name: "send as denied", from: colleague, code: 550, ec: smtp.EnhancedCode{5, 7, 60}, advice: "Add-RecipientPermission"},
		{name: "REST disabled", setup: func(e *graphEnv) { e.Graph.DisableREST(mailbox) }, code: 451, ec: smtp.EnhancedCode{4, 7, 0}, advice: "Exchange Online licence"},
		{name: "access policy", setup: func(e *graphEnv) { e.Graph.SetAccessPolicy(clientID, colleague) }, code: 451, ec: smtp.EnhancedCode{4, 7, 0}, advice: "New-ApplicationAccessPolicy"},
		{name: "no Mail.Send", roles: []string{"IMAP.AccessAsApp", "https://graph.microsoft.com/Mail.ReadWrite"}, code: 451, ec: smtp.EnhancedCode{4, 7, 0}, advice: "Mail.Send"},
		{name: "size", setup: func(e *graphEnv) {
			e.Graph.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 400, Code: "ErrorMessageSizeExceeded", Message: "The message exceeds the maximum supported size."})
		}, code: 552, ec: smtp.EnhancedCode{5, 3, 4}, advice: "MaxSendSize"},
		{name: "unavailable", setup: func(e *graphEnv) {
			// Longer than broker's retry budget: 451 at once.
			e.Graph.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 503, RetryAfter: 200 * time.Second})
		}, code: 451, ec: smtp.EnhancedCode{4, 4, 5}, advice: "throttles"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newGraphEnv(t, graphEnvOptions{Roles: tt.roles})
			if tt.setup != nil {
				tt.setup(env)
			}
			from := tt.from
			if from == "" {
				from = mailbox
			}
			c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
			m := newMIMEMessage(from, []string{colleague}, nil, "error "+tt.name, "error@contoso.com", "x")
			err := c.SendMail(from, []string{colleague}, m)
			code, ec, text := smtpReply(err)
			if code != tt.code || ec != tt.ec {
				t.Fatalf("got %d %v %q, want %d %v\n%s", code, ec, text, tt.code, tt.ec, env.Daemon.Log())
			}
			line := env.Daemon.waitLog(`msg="message not relayed"`)
			if !strings.Contains(line, tt.advice) || !strings.Contains(line, "via=graph") {
				t.Fatalf("log line %q lacks the advice %q", line, tt.advice)
			}
			if len(env.Graph.Sent()) != 0 {
				t.Fatalf("Graph sent it anyway")
			}
		})
	}
}

// TestGraphOutcomeUnknown: when the connection breaks after Graph took
// the send, broker finds the message in Sent Items and answers 250; when
// it cannot tell, 451.
func TestGraphOutcomeUnknown(t *testing.T) {
	t.Run("found in Sent Items", func(t *testing.T) {
		env := newGraphEnv(t, graphEnvOptions{})
		env.Graph.DropAfterAccept(1)
		c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
		m := newMIMEMessage(mailbox, []string{colleague}, nil, "unknown", "unknown-1@contoso.com", "x")
		if err := c.SendMail(mailbox, []string{colleague}, m); err != nil {
			t.Fatalf("got %v, want 250\n%s", err, env.Daemon.Log())
		}
		env.waitSent(t, 1)
		env.Daemon.waitLog("found in Sent Items")
	})
	t.Run("not found", func(t *testing.T) {
		// Not saved to Sent Items, and Graph fails the look-up of the
		// draft: broker cannot tell, and answers 451.
		env := newGraphEnv(t, graphEnvOptions{Config: "save_to_sent_items = false\n"})
		env.Graph.DropAfterAccept(1)
		for range 3 { // each look-up
			env.Graph.FailNext(m365sim.GraphGetMessage, m365sim.GraphError{Status: 500})
		}
		c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
		m := newMIMEMessage(mailbox, []string{colleague}, nil, "unknown", "unknown-2@contoso.com", "x")
		code, ec, text := smtpReply(c.SendMail(mailbox, []string{colleague}, m))
		if code != 451 || ec != (smtp.EnhancedCode{4, 4, 2}) {
			t.Fatalf("got %d %v %q, want 451 4.4.2\n%s", code, ec, text, env.Daemon.Log())
		}
		env.Daemon.waitLog("looking for the message in Sent Items")
	})
}

// TestGraphNoSecretOnDisk holds Graph while a message is spooled and
// looks at every file broker has open and at its temporary directory: the
// message's text is nowhere to be read. The log holds no token.
func TestGraphNoSecretOnDisk(t *testing.T) {
	tmp := t.TempDir()
	env := newGraphEnv(t, graphEnvOptions{Env: []string{"TMPDIR=" + tmp}})
	release := env.Graph.Hold(m365sim.GraphSendMail)
	defer release()
	const marker = "CONFIDENTIAL-PAYROLL-7d1f3a9c"
	body := strings.Repeat(marker+" ", 2000)
	done := make(chan error, 1)
	go func() {
		c, err := smtp.Dial(env.Daemon.SMTPAddr)
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		if err := c.Auth(saslPlain(mailbox, env.Password)); err != nil {
			done <- err
			return
		}
		done <- c.SendMail(mailbox, []string{colleague}, newMIMEMessage(mailbox, []string{colleague}, nil, marker, "secret@contoso.com", body))
	}()
	if err := env.Graph.WaitHeld(testContext(t, smtpWait), 1); err != nil {
		t.Fatal(err)
	}
	pid := env.Daemon.cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	spooled := 0
	for _, fd := range fds {
		p := fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())
		target, _ := os.Readlink(p)
		if !strings.HasPrefix(target, "/") || strings.HasPrefix(target, "/dev/") || strings.HasPrefix(target, "/proc/") {
			continue
		}
		if strings.HasPrefix(target, tmp) {
			spooled++
			if !strings.Contains(target, "(deleted)") {
				t.Errorf("open file %s has a name", target)
			}
		}
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if bytes.Contains(data, []byte(marker)) {
			t.Errorf("open file %s (fd %s) holds the message in clear", target, fd.Name())
		}
	}
	if spooled == 0 {
		t.Errorf("no spool file open in %s", tmp)
	}
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(tmp, e.Name()))
		t.Errorf("%s left in the temporary directory (%d bytes)", e.Name(), len(data))
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("send: %v", err)
	}
	env.waitSent(t, 1)
	log := env.Daemon.Log()
	if strings.Contains(log, "eyJ") || strings.Contains(log, "Bearer") || strings.Contains(log, marker+" ") {
		t.Fatalf("the log holds a token or the message:\n%s", log)
	}
}
