package test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// seededSubjects are the subjects m365sim puts in every new INBOX.
var seededSubjects = []string{"Welcome to your new mailbox", "Quarterly report draft", "Scanned document"}

// clientTimeout bounds a real client program's run.
const clientTimeout = time.Minute

func runClient(t *testing.T, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is not installed: run `make deps` (see .ci/deps)", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestCurlListsInbox(t *testing.T) {
	env := newSimEnv(t)
	out := runClient(t, "curl", "-sS", "--max-time", "30",
		"-u", mailbox+":"+env.Password,
		"imap://"+env.Daemon.IMAPAddr+"/INBOX",
		"-X", "FETCH 1:* ENVELOPE")
	for _, subject := range seededSubjects {
		if !strings.Contains(out, subject) {
			t.Fatalf("curl FETCH ENVELOPE: got\n%s\nwant %q", out, subject)
		}
	}
}

const imaplibScript = `
import imaplib, sys
host, port = sys.argv[1].rsplit(":", 1)
user, password = sys.argv[2], sys.argv[3]
m = imaplib.IMAP4(host, int(port))
typ, _ = m.login(user, password)
assert typ == "OK", typ
typ, data = m.select("INBOX")
assert typ == "OK", (typ, data)
n = int(data[0])
msg = b"From: scanner@contoso.com\r\nSubject: imaplib append\r\n\r\nscan attached\r\n"
typ, data = m.append("INBOX", None, None, msg)
assert typ == "OK", (typ, data)
m.noop()
typ, data = m.fetch(str(n + 1), "(RFC822)")
assert typ == "OK", (typ, data)
assert data[0][1] == msg, data[0][1]
typ, data = m.search(None, "ALL")
print("messages", len(data[0].split()))
m.logout()
try:
    imaplib.IMAP4(host, int(port)).login(user, "wrong-password-wrong-password-xx")
    print("wrong password accepted")
except imaplib.IMAP4.error as e:
    print("refused", e)
`

func TestPythonImaplib(t *testing.T) {
	env := newSimEnv(t)
	out := runClient(t, "python3", "-c", imaplibScript, env.Daemon.IMAPAddr, mailbox, env.Password)
	if !strings.Contains(out, "messages 4") {
		t.Fatalf("imaplib: got %q, want 4 messages after one append to the 3 seeded", out)
	}
	if !strings.Contains(out, "refused") || !strings.Contains(out, "AUTHENTICATIONFAILED") {
		t.Fatalf("imaplib wrong password: got %q, want refused with AUTHENTICATIONFAILED", out)
	}
}
