package test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/mailbroker/broker/test/m365sim"
)

// Addresses of the Graph tests: colleague and bccOnly are mailboxes of the
// simulated IMAP server; headerOnly is one too, to see that it gets
// nothing; outsider is not.
const (
	colleague  = "colleague@contoso.com"
	bccOnly    = "archive@contoso.com"
	headerOnly = "cc.only@contoso.com"
	outsider   = "partner@example.net"
)

// graphRoles are the application permissions of an app sending through
// Graph, besides IMAP.
var graphRoles = []string{"IMAP.AccessAsApp", "https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite"}

// graphEnvOptions shape a graphEnv.
type graphEnvOptions struct {
	Graph m365sim.GraphOptions
	// Config is extra [smtp] keys.
	Config string
	// Bin is the broker binary; "" is the -race build.
	Bin string
	// Roles replace graphRoles.
	Roles []string
	// Env is extra environment of the daemon, "KEY=value".
	Env []string
}

// graphEnv is a broker daemon whose account sends through the simulated
// Microsoft Graph, which delivers into the simulated IMAP mailboxes.
type graphEnv struct {
	Entra    *m365sim.Entra
	IMAP     *m365sim.IMAP
	Graph    *m365sim.Graph
	Daemon   *daemon
	Password string
}

func newGraphEnv(t testing.TB, o graphEnvOptions) *graphEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &graphEnv{Entra: entra}
	entra.AddTenant(tenant)
	roles := o.Roles
	if roles == nil {
		roles = graphRoles
	}
	const secret = "Zx8Q~graph.secret-value_0123456789abcdefXYZ"
	entra.AddApp(m365sim.App{Tenant: tenant, ClientID: clientID, Secret: secret, Roles: roles, Mailboxes: []string{mailbox}})
	if env.IMAP, err = m365sim.NewIMAP(entra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.IMAP.Close() })
	for _, m := range []string{mailbox, colleague, bccOnly, headerOnly} {
		if err := env.IMAP.AddMailbox(m); err != nil {
			t.Fatal(err)
		}
	}
	o.Graph.IMAP = env.IMAP
	if env.Graph, err = m365sim.NewGraph(entra, o.Graph); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Graph.Close() })
	dir := t.TempDir()
	imapCA := writeFile(t, dir, "imap-ca.pem", env.IMAP.CACertPEM())
	graphCA := writeFile(t, dir, "graph-ca.pem", env.Graph.CACertPEM())
	secretFile := writeFile(t, dir, "client.secret", []byte(secret+"\n"))
	// No SMTP upstream is used: port 9 refuses at once.
	cfg := smtpBrokerConfig(dir+"/state", env.IMAP.Addr(), imapCA, "127.0.0.1:9", imapCA, entra.URL(), secretFile,
		fmt.Sprintf("smtp_via = \"graph\"\ngraph_url = %q\ngraph_ca_file = %q\n%s", env.Graph.URL(), graphCA, o.Config))
	bin := o.Bin
	if bin == "" {
		bin = brokerBin
	}
	for _, kv := range o.Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	env.Daemon = startDaemonBin(t, bin, dir, cfg)
	_, env.Password = env.Daemon.addAppPassword(mailbox)
	return env
}

// waitSent waits for Graph to have sent n messages.
func (env *graphEnv) waitSent(t testing.TB, n int) []m365sim.GraphMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), smtpWait)
	defer cancel()
	msgs, err := env.Graph.WaitSent(ctx, n)
	if err != nil {
		t.Fatalf("Graph sent %d messages within %v, want %d\n%s", len(env.Graph.Sent()), smtpWait, n, env.Daemon.Log())
	}
	return msgs
}

// mimeMessage is a generated multipart message: a text body and
// attachments of pseudo-random bytes, base64 in lines of 76, produced as
// it is read, so that a 100 MB message needs no 100 MB in the test. It
// records each attachment's SHA-256.
type mimeMessage struct {
	Subject, MessageID, Body string
	Sums                     [][32]byte

	r io.Reader
}

func newMIMEMessage(from string, to, cc []string, subject, id, body string, sizes ...int64) *mimeMessage {
	m := &mimeMessage{Subject: subject, MessageID: id, Body: body, Sums: make([][32]byte, len(sizes))}
	pr, pw := io.Pipe()
	m.r = pr
	go func() {
		w := &crlfWriter{w: pw}
		fmt.Fprintf(w, "From: Support <%s>\r\nTo: %s\r\n", from, strings.Join(to, ", "))
		if len(cc) > 0 {
			fmt.Fprintf(w, "Cc: %s\r\n", strings.Join(cc, ", "))
		}
		fmt.Fprintf(w, "Subject: %s\r\nMessage-ID: <%s>\r\nDate: Mon, 02 Jan 2006 15:04:05 +0000\r\nMIME-Version: 1.0\r\n", subject, id)
		fmt.Fprintf(w, "Content-Type: multipart/mixed; boundary=\"=_b0undary\"\r\n\r\n")
		fmt.Fprintf(w, "--=_b0undary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n", body)
		for i, n := range sizes {
			fmt.Fprintf(w, "--=_b0undary\r\nContent-Type: application/octet-stream; name=\"part%d.bin\"\r\n"+
				"Content-Disposition: attachment; filename=\"part%d.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", i, i)
			h := sha256.New()
			writeRandomBase64(w, h, n, uint64(i+1))
			copy(m.Sums[i][:], h.Sum(nil))
		}
		fmt.Fprintf(w, "--=_b0undary--\r\n")
		pw.CloseWithError(w.err)
	}()
	return m
}

func (m *mimeMessage) Read(p []byte) (int, error) { return m.r.Read(p) }

type crlfWriter struct {
	w   io.Writer
	err error
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.err = err
	return n, err
}

// writeRandomBase64 writes n pseudo-random bytes base64-encoded in lines
// of 76 characters, hashing the bytes into h.
func writeRandomBase64(w io.Writer, h hash.Hash, n int64, seed uint64) {
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	raw := make([]byte, 57*1024) // 57 bytes are one line of 76
	line := make([]byte, 0, 78*1024)
	for n > 0 {
		k := min(int64(len(raw)), n)
		rng.Read(raw[:k])
		h.Write(raw[:k])
		line = line[:0]
		for off := int64(0); off < k; off += 57 {
			end := min(off+57, k)
			line = base64.StdEncoding.AppendEncode(line, raw[off:end])
			line = append(line, '\r', '\n')
		}
		if _, err := w.Write(line); err != nil {
			return
		}
		n -= k
	}
}

// sendRaw sends a message over an authenticated raw connection (its
// lines need no dot-stuffing) and returns the final reply.
func sendRaw(t testing.TB, c *rawSMTP, from string, rcpts []string, msg io.Reader, timeout time.Duration) string {
	t.Helper()
	c.conn.SetDeadline(time.Now().Add(timeout))
	c.cmd("MAIL FROM:<"+from+">", "250 ")
	for _, r := range rcpts {
		c.cmd("RCPT TO:<"+r+">", "250 ")
	}
	c.cmd("DATA", "354 ")
	if _, err := io.CopyBuffer(c.conn, msg, make([]byte, 256<<10)); err != nil {
		t.Fatalf("sending the message: %v", err)
	}
	c.send(".\r\n")
	return c.reply()
}

func saslPlain(user, password string) sasl.Client { return sasl.NewPlainClient("", user, password) }

// testContext is a context that ends after d or with the test.
func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
