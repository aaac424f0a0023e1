package smtp

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"runtime"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// messageReader produces a message of n octets in 76-octet lines without
// holding it.
type messageReader struct {
	n, off int64
}

var (
	messageLine  = []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n")
	messageBlock = bytes.Repeat(messageLine, 1024)
)

func (r *messageReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off)]
	for n := 0; n < len(p); {
		at := int((r.off + int64(n)) % int64(len(messageBlock)))
		n += copy(p[n:], messageBlock[at:])
	}
	r.off += int64(len(p))
	if r.off == r.n {
		// The message ends with a line break wherever n falls.
		copy(p[max(len(p)-2, 0):], "\r\n"[max(2-len(p), 0):])
	}
	return len(p), nil
}

func relayMessage(tb testing.TB, c *gosmtp.Client, size int64) {
	tb.Helper()
	if err := c.Mail(sender, nil); err != nil {
		tb.Fatal(err)
	}
	if err := c.Rcpt(recipient, nil); err != nil {
		tb.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(w, &messageReader{n: size}); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
}

// TestSMTPRelayStreams relays a 50 MB message and checks that the whole
// process, proxy, client and upstream together, allocated a small fraction
// of it: the message is streamed, never held.
func TestSMTPRelayStreams(t *testing.T) {
	const size = 50 << 20
	up := startSMTPStub(t, &smtpStub{HashOnly: true})
	_, addr, _ := startSMTPProxy(t, Options{}, up, nil)
	c := loginSMTP(t, addr)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	relayMessage(t, c, size)
	runtime.ReadMemStats(&after)
	got := up.received()
	h := sha256.New()
	io.Copy(h, &messageReader{n: size})
	if len(got) != 1 || got[0].size != size || string(got[0].sum[:]) != string(h.Sum(nil)) {
		t.Fatalf("upstream did not get the message intact")
	}
	// A buffering relay allocates at least the message size. The race
	// runtime makes crypto/tls allocate per record, hence its looser bound.
	limit := uint64(size / 20)
	if proxytest.RaceEnabled {
		limit = size / 2
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > limit {
		t.Fatalf("relaying %d MiB allocated %d KiB, want well under the message size", size>>20, alloc>>10)
	}
}

// BenchmarkSMTPRelay10MB sends 10 MB messages to the upstream directly
// (XOAUTH2 over STARTTLS) and through the proxy, to show the relay's cost.
func BenchmarkSMTPRelay10MB(b *testing.B) {
	const size = 10 << 20
	up := startSMTPStub(b, &smtpStub{HashOnly: true})
	b.Run("direct", func(b *testing.B) {
		c, err := gosmtp.DialStartTLS(up.addr, &tls.Config{RootCAs: proxytest.MustCert(b).Pool})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if err := c.Auth(xoauth2.NewClient(sender, proxytest.Token(sender))); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			relayMessage(b, c, size)
		}
	})
	b.Run("proxy", func(b *testing.B) {
		_, addr, _ := startSMTPProxy(b, Options{}, up, nil)
		c := loginSMTP(b, addr)
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			relayMessage(b, c, size)
		}
	})
}
