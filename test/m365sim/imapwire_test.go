package m365sim

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// TestIMAPWire checks the exact lines a client sees, as broker's own
// pre-auth parser will read them.
func TestIMAPWire(t *testing.T) {
	f := newFixture(t)
	s := newIMAP(t, f.e)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CACertPEM())
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	readLine := func() string {
		t.Helper()
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading: %v (so far %q)", err, line)
		}
		return line
	}
	send := func(line string) {
		t.Helper()
		if _, err := conn.Write([]byte(line + "\r\n")); err != nil {
			t.Fatalf("writing: %v", err)
		}
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	if greeting := readLine(); !strings.HasPrefix(greeting, "* OK [CAPABILITY IMAP4rev1 SASL-IR ") || !strings.Contains(greeting, " AUTH=XOAUTH2]") {
		t.Fatalf("greeting: got %q", greeting)
	}
	send("a1 LOGIN alice secret")
	if got, want := readLine(), "a1 NO LOGIN failed.\r\n"; got != want {
		t.Fatalf("LOGIN: got %q, want %q", got, want)
	}

	send("a2 AUTHENTICATE XOAUTH2 " + b64(string(xoauth2.Response(alice, "bad"))))
	if got, want := readLine(), "+ "+b64(xoauth2.DefaultErrorChallenge)+"\r\n"; got != want {
		t.Fatalf("challenge: got %q, want %q", got, want)
	}
	send("")
	if got, want := readLine(), "a2 NO AUTHENTICATE failed.\r\n"; got != want {
		t.Fatalf("after challenge: got %q, want %q", got, want)
	}

	send("a3 AUTHENTICATE XOAUTH2 " + b64("user=x\x01"))
	if got, want := readLine(), "a3 NO AUTHENTICATE failed.\r\n"; got != want {
		t.Fatalf("malformed response: got %q, want %q", got, want)
	}

	// Without SASL-IR: empty challenge, then the response.
	send("a4 AUTHENTICATE XOAUTH2")
	if got, want := readLine(), "+ \r\n"; got != want {
		t.Fatalf("no initial response: got %q, want %q", got, want)
	}
	send(b64(string(xoauth2.Response(alice, appAccessToken(t, f)))))
	if got := readLine(); !strings.HasPrefix(got, "a4 OK [CAPABILITY IMAP4rev1 ") || strings.Contains(got, "IMAP4rev2") {
		t.Fatalf("AUTHENTICATE: got %q", got)
	}

	// IDLE with nothing selected must neither spin nor end by itself.
	send("a5 IDLE")
	if got, want := readLine(), "+ idling\r\n"; got != want {
		t.Fatalf("IDLE: got %q, want %q", got, want)
	}
	send("DONE")
	if got, want := readLine(), "a5 OK IDLE completed\r\n"; got != want {
		t.Fatalf("DONE: got %q, want %q", got, want)
	}
}
