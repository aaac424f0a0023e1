package smtp

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// FuzzSASL drives the shared PLAIN and LOGIN servers with arbitrary
// responses, the first one possibly absent (no initial response), bare as
// IMAP uses them and wrapped for go-smtp.
func FuzzSASL(f *testing.F) {
	f.Add(false, true, false, []byte("\x00alice\x00secret"))
	f.Add(false, false, true, []byte("\n\x00alice\x00secret"))
	f.Add(true, true, false, []byte("alice\nsecret"))
	f.Add(true, false, true, []byte("\nalice\nsecret"))
	f.Add(true, true, false, []byte("\n\n\n"))
	f.Add(false, true, true, []byte("bob\x00alice\x00secret\x00"))
	f.Add(false, true, false, []byte("bob\x00alice\x00secret"))
	f.Add(false, false, false, []byte("\n"))
	f.Fuzz(func(t *testing.T, login, withIR, forSMTP bool, input []byte) {
		var calls int
		var gotUser, gotPass string
		check := func(user, pass string) error {
			calls++
			gotUser, gotPass = user, pass
			return nil
		}
		mech := "PLAIN"
		srv := proxy.NewPlainServer(check)
		if login {
			mech, srv = "LOGIN", proxy.NewLoginServer(check)
		}
		if forSMTP {
			srv = &saslServer{srv, mech, slog.New(slog.DiscardHandler)}
		}
		responses := bytes.Split(input, []byte("\n"))
		if !withIR {
			responses = append([][]byte{nil}, responses...)
		}
		done := false
		for i, r := range responses {
			_, d, err := srv.Next(r)
			if d {
				done = true
				var se *gosmtp.SMTPError
				var sr *proxy.SASLRefusal
				switch {
				case err == nil && calls != 1:
					t.Fatalf("success with %d credential checks", calls)
				case err != nil && forSMTP && !errors.As(err, &se):
					t.Fatalf("step %d: error %v is not an SMTP reply", i, err)
				case err != nil && !forSMTP && !errors.As(err, &sr):
					t.Fatalf("step %d: error %v is not a refusal", i, err)
				case sr != nil && (sr.Reason == "" || calls != 0):
					t.Fatalf("step %d: refusal %+v after %d checks", i, sr, calls)
				}
				break
			}
			if err != nil {
				t.Fatalf("step %d: error %v without done", i, err)
			}
		}
		if calls > 1 {
			t.Fatalf("credentials checked %d times", calls)
		}
		if calls == 1 && (gotUser == "" || len(gotUser) > proxy.MaxSASLField || len(gotPass) > proxy.MaxSASLField) {
			t.Fatalf("checked user %q password of %d octets", gotUser, len(gotPass))
		}
		if calls == 1 && !done {
			t.Fatalf("checked credentials but did not finish")
		}
	})
}

// FuzzSMTPSession feeds arbitrary client input to a whole session: it must
// end, with every reply a well-formed SMTP reply, and never panic.
func FuzzSMTPSession(f *testing.F) {
	f.Add([]byte("EHLO x\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"))
	f.Add([]byte("EHLO x\r\nAUTH LOGIN\r\nYWxpY2U=\r\nd3Jvbmc=\r\nQUIT\r\n"))
	f.Add([]byte("HELO x\nMAIL FROM:<a@b> SIZE=99999999999\nBDAT 5 LAST\nhello\n"))
	f.Add([]byte("EHLO x\r\nAUTH PLAIN\r\n*\r\nAUTH XOAUTH2 =\r\nSTARTTLS\r\nRSET\r\nNOOP\r\nVRFY a\r\n"))
	f.Add([]byte("\x00\xff\r\n\r\n.\r\n"))
	f.Add([]byte("EHLO x\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice>\r\nRCPT TO:<bob>\r\nRCPT TO:<reject>\r\nDATA\r\n.x\r\n\n.\n\r\n.\r\nRSET\r\nMAIL FROM:<alice>\r\nRSET\r\n"))
	// Logins with password "secret" reach a real upstream, so that the
	// relay's paths are fuzzed too.
	up := startSMTPStub(f, &smtpStub{HashOnly: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	f.Fuzz(func(t *testing.T, input []byte) {
		srv := NewServer(&Options{
			Upstream:    up.addr,
			UpstreamTLS: &tls.Config{RootCAs: proxytest.MustCert(t).Pool},
			Auth:        newSMTPStubAuth("secret"),
			Logger:      slog.New(slog.DiscardHandler),
			ReadTimeout: 5 * time.Second,
			DialTimeout: time.Second,
		})
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		tc := proxy.NewConn(server)
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer tc.Close()
			srv.handle(tc)
		}()
		go func() {
			client.Write(input)
			// The end of input ends the session, whatever state it is in.
			client.(*net.TCPConn).CloseWrite()
		}()
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		out, err := io.ReadAll(client)
		if err != nil && !proxytest.IsConnReset(err) {
			t.Fatalf("reading replies: %v (got %q)", err, out)
		}
		<-done
		for _, line := range strings.Split(strings.TrimSuffix(string(out), "\r\n"), "\r\n") {
			if line == "" && len(out) == 0 {
				continue
			}
			if len(line) < 4 || line[0] < '2' || line[0] > '5' || (line[3] != ' ' && line[3] != '-') {
				t.Fatalf("malformed reply line %q in %q", line, out)
			}
		}
	})
}

// FuzzWireData checks the relay's DATA parsers on arbitrary data, in
// arbitrary reads: wireScanner against its plain reference, and stuffer
// against its own, whose output wireScanner passes through unchanged.
func FuzzWireData(f *testing.F) {
	f.Add([]byte("a\r\n..\r\n.b\n.\r\n.\nc\rd\r\r\n.\r\nQUIT\r\n"), uint8(3), uint8(8))
	f.Add([]byte("x\n.\r\n..\n.\r\n"), uint8(1), uint8(0))
	f.Add([]byte(".\r\n"), uint8(5), uint8(2))
	f.Add([]byte("\r\n.\r.\r\n.\r\n"), uint8(7), uint8(30))
	f.Add([]byte("00000000000\r"), uint8(0), uint8(8))
	f.Fuzz(func(t *testing.T, data []byte, split, maxLine uint8) {
		checkWire(t, data, int(split), int(maxLine)+3)

		var b bytes.Buffer
		s := &stuffer{w: &b}
		for p := data; len(p) > 0; {
			n := min(1+int(split)%13, len(p))
			if _, err := s.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		stuffed := b.Bytes()
		if want := stuffReference(data); !bytes.Equal(stuffed, want) {
			t.Fatalf("stuffer made %q of %q, want %q", stuffed, data, want)
		}
		if len(stuffed) > 0 && !bytes.HasSuffix(stuffed, []byte("\r\n")) {
			stuffed = append(stuffed, "\r\n"...)
		}
		out, sc, rest, err := scanWire(append(stuffed, ".\r\n"...), int(split), copyBuffer, 0, len(stuffed)+1)
		if err != nil || sc.tooLong || !bytes.Equal(out, stuffed) || len(rest) != 0 {
			t.Fatalf("stuffed %q scanned as %q rest %q (err %v), want it unchanged", stuffed, out, rest, err)
		}
	})
}
