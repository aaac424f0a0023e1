package imap

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// FuzzIMAPUpstreamLogin plays arbitrary upstream bytes against the upstream
// login: it must return, without panicking, once upstream's bytes end.
func FuzzIMAPUpstreamLogin(f *testing.F) {
	for _, s := range []string{
		"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\nA1 OK [CAPABILITY IMAP4rev1 IDLE] done\r\n",
		"* OK ready\r\n* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nA0 OK\r\n+ \r\nA1 OK\r\n* CAPABILITY IMAP4rev1\r\nA2 OK\r\n",
		"* OK [CAPABILITY SASL-IR] hi\r\n+ eyJzdGF0dXMiOiI0MDEifQ==\r\nA1 NO AUTHENTICATE failed.\r\n",
		"* OK [CAPABILITY SASL-IR] hi\r\nA1 OK\r\nA2 BAD User is authenticated but not connected.\r\n",
		"* BYE go away\r\n",
		"* OK {5}\r\nhello\r\n",
		"* OK [CAPABILITY SASL-IR] hi\r\n+ !!!\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		defer client.Close()
		go func() {
			defer server.Close()
			go io.Copy(io.Discard, server)
			server.Write(data)
		}()
		client.SetDeadline(time.Now().Add(10 * time.Second))
		u := &upstreamSession{conn: client, br: bufio.NewReaderSize(client, upstreamReadBuffer)}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if caps, err := u.greet(); err == nil {
				u.login(xoauth2.NewClient("user@example.com", "token"), caps)
			}
		}()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("upstream login did not return")
		}
	})
}
