package smtp

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// benchRTT is the round trip to Exchange Online from an on-premises
// server, give or take.
const benchRTT = 30 * time.Millisecond

// delayed forwards TCP connections to addr, each byte arriving rtt/2 after
// it was sent in either direction, and returns its own address.
func delayed(tb testing.TB, addr string, rtt time.Duration) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			go delayCopy(u, c, rtt/2)
			go delayCopy(c, u, rtt/2)
		}
	}()
	return l.Addr().String()
}

// delayCopy copies src to dst, each chunk delay after it was read, and
// closes dst after the last.
func delayCopy(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		at time.Time
		b  []byte
	}
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{time.Now().Add(delay), b[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	defer dst.Close()
	for c := range q {
		time.Sleep(time.Until(c.at)) // pacing, not synchronisation
		if _, err := dst.Write(c.b); err != nil {
			src.Close()
			return
		}
	}
}

// sendPerConnection runs one client session as a scanner does: connect,
// log in, send one small message, QUIT.
func sendPerConnection(tb testing.TB, dial func() (*gosmtp.Client, error), auth sasl.Client) {
	c, err := dial()
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(auth); err != nil {
		tb.Fatal(err)
	}
	relayMessage(tb, c, 4<<10)
	if err := c.Quit(); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkSMTPMessagePerConnection sends one message per connection, as
// scanners and ACDs do, to an upstream benchRTT away: directly (STARTTLS,
// XOAUTH2), and through the proxy with and without reused upstream logins.
func BenchmarkSMTPMessagePerConnection(b *testing.B) {
	up := startSMTPStub(b, &smtpStub{HashOnly: true})
	far := delayed(b, up.addr, benchRTT)
	b.Run("direct", func(b *testing.B) {
		dial := func() (*gosmtp.Client, error) {
			return gosmtp.DialStartTLS(far, &tls.Config{RootCAs: proxytest.MustCert(b).Pool})
		}
		for b.Loop() {
			sendPerConnection(b, dial, xoauth2.NewClient(sender, proxytest.Token(sender)))
		}
	})
	for _, bb := range []struct {
		name  string
		reuse time.Duration
	}{{"proxy", 0}, {"proxy-no-reuse", -1}} {
		b.Run(bb.name, func(b *testing.B) {
			_, addr, _ := startSMTPProxy(b, Options{Upstream: far, ReuseIdleTimeout: bb.reuse}, up, nil)
			dial := func() (*gosmtp.Client, error) { return gosmtp.Dial(addr) }
			for b.Loop() {
				sendPerConnection(b, dial, sasl.NewPlainClient("", sender, "secret"))
			}
		})
	}
}
