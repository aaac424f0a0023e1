package test

// Benchmarks compare a client going through broker with the same client
// logging in straight to the same upstream with XOAUTH2. Run: make bench.

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/mailbroker/broker/proxy/xoauth2"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// directToken fetches an app-only token from the simulated identity platform.
func directToken(b testing.TB, env *inProcess) string {
	b.Helper()
	cc := clientcredentials.Config{
		ClientID: clientID, ClientSecret: env.Secret,
		TokenURL:  env.Entra.URL() + "/" + tenant + "/oauth2/v2.0/token",
		Scopes:    []string{"https://outlook.office365.com/.default"},
		AuthStyle: oauth2.AuthStyleInParams,
	}
	tok, err := cc.Token(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return tok.AccessToken
}

// loginFunc opens one logged-in session.
type loginFunc func() (*imapclient.Client, error)

// directLogin logs in straight to upstreamAddr, which is the upstream's
// own address or one forwarding to it.
func directLogin(b testing.TB, env *inProcess, upstreamAddr string) loginFunc {
	token := directToken(b, env)
	conf := &tls.Config{RootCAs: certPool(b, env.Upstream.CACertPEM()), ServerName: "127.0.0.1"}
	return func() (*imapclient.Client, error) {
		c, err := imapclient.DialTLS(upstreamAddr, &imapclient.Options{TLSConfig: conf})
		if err != nil {
			return nil, err
		}
		if err := c.Authenticate(xoauth2.NewClient(mailbox, token)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

func proxyLogin(env *inProcess) loginFunc {
	return func() (*imapclient.Client, error) {
		c, err := imapclient.DialInsecure(env.IMAPAddr, nil)
		if err != nil {
			return nil, err
		}
		if err := c.Login(mailbox, env.Password).Wait(); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// BenchmarkLogin measures connect+login latency with a cached token and a
// remembered app password; it reports the median.
func BenchmarkLogin(b *testing.B) {
	env := newInProcess(b, io.Discard)
	for _, mode := range []struct {
		name  string
		login loginFunc
	}{{"direct", directLogin(b, env, env.Upstream.Addr())}, {"proxy", proxyLogin(env)}} {
		b.Run(mode.name, func(b *testing.B) {
			c, err := mode.login() // warm: token cached, password verified once
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
			var durations []time.Duration
			for b.Loop() {
				start := time.Now()
				c, err := mode.login()
				if err != nil {
					b.Fatal(err)
				}
				durations = append(durations, time.Since(start))
				c.Close()
			}
			slices.Sort(durations)
			b.ReportMetric(float64(durations[len(durations)/2].Microseconds()), "p50-µs")
		})
	}
}

// BenchmarkFetch10MB measures a 10 MB FETCH BODY[] through each path.
func BenchmarkFetch10MB(b *testing.B) {
	env := newInProcess(b, io.Discard)
	benchmarkFetch(b, env, env.Upstream.Addr())
}

// benchmarkFetch fetches a 10 MB message directly from upstreamAddr and
// through the proxy, whose upstream is the same address.
func benchmarkFetch(b *testing.B, env *inProcess, upstreamAddr string) {
	msg := append([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"), 10<<20/64)...)
	setup, err := proxyLogin(env)()
	if err != nil {
		b.Fatal(err)
	}
	app := setup.Append("INBOX", int64(len(msg)), nil)
	app.Write(msg)
	app.Close()
	data, err := app.Wait()
	if err != nil {
		b.Fatal(err)
	}
	setup.Close()
	for _, mode := range []struct {
		name  string
		login loginFunc
	}{{"direct", directLogin(b, env, upstreamAddr)}, {"proxy", proxyLogin(env)}} {
		b.Run(mode.name, func(b *testing.B) {
			c, err := mode.login()
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				msgs, err := c.Fetch(imap.UIDSetNum(data.UID), &imap.FetchOptions{
					UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}},
				}).Collect()
				if err != nil || len(msgs) != 1 {
					b.Fatalf("FETCH: %v (%d messages)", err, len(msgs))
				}
				for _, body := range msgs[0].BodySection {
					if len(body.Bytes) != len(msg) {
						b.Fatalf("FETCH: got %d bytes, want %d", len(body.Bytes), len(msg))
					}
				}
			}
		})
	}
}

// BenchmarkLoginBurst opens 50 sessions at once; none may fail.
func BenchmarkLoginBurst(b *testing.B) {
	env := newInProcess(b, io.Discard)
	login := proxyLogin(env)
	for b.Loop() {
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		clients := make(chan *imapclient.Client, 50)
		for range 50 {
			wg.Go(func() {
				c, err := login()
				if err != nil {
					errs <- err
					return
				}
				clients <- c
			})
		}
		wg.Wait()
		close(errs)
		close(clients)
		for c := range clients {
			c.Close()
		}
		for err := range errs {
			b.Fatalf("login in a burst of 50: %v", err)
		}
	}
}
