package graph_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/graph"
	"github.com/mailbroker/broker/proxy/smtp"
	"github.com/mailbroker/broker/test/m365sim"
)

const (
	tenant   = "contoso.onmicrosoft.com"
	clientID = "7f7f7f7f-1111-4222-8333-944444444444"
	secret   = "graph.unit.secret-value"
	mbox     = "support@contoso.onmicrosoft.com"
	other    = "other@contoso.onmicrosoft.com"
	outside  = "outside@example.net"
)

type fixture struct {
	entra *m365sim.Entra
	g     *m365sim.Graph
	d     *graph.Dialer
	log   *bytes.Buffer
}

func newFixture(t *testing.T, gopts m365sim.GraphOptions, opts graph.Options) *fixture {
	t.Helper()
	e, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	e.AddTenant(tenant)
	e.AddApp(m365sim.App{Tenant: tenant, ClientID: clientID, Secret: secret, Mailboxes: []string{mbox},
		Roles: []string{"https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite"}})
	im, err := m365sim.NewIMAP(e)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	for _, m := range []string{mbox, other} {
		if err := im.AddMailbox(m); err != nil {
			t.Fatal(err)
		}
	}
	gopts.IMAP = im
	g, err := m365sim.NewGraph(e, gopts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.CACertPEM())
	var buf bytes.Buffer
	opts.URL = func(string) string { return g.URL() }
	opts.TLS = &tls.Config{RootCAs: pool}
	opts.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: &buf}, nil))
	if opts.LookupDelays == nil {
		opts.LookupDelays = []time.Duration{0}
	}
	d := graph.NewDialer(&opts)
	t.Cleanup(d.Close)
	return &fixture{entra: e, g: g, d: d, log: &buf}
}

type lockedWriter struct{ w *bytes.Buffer }

func (l *lockedWriter) Write(p []byte) (int, error) { return l.w.Write(p) }

func (f *fixture) token(ctx context.Context) (string, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret},
		"scope": {"https://graph.microsoft.com/.default"}}
	resp, err := http.PostForm(f.entra.URL()+"/"+tenant+"/oauth2/v2.0/token", form)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || tr.AccessToken == "" {
		return "", fmt.Errorf("token: %d %v", resp.StatusCode, err)
	}
	return tr.AccessToken, nil
}

func (f *fixture) dial(t *testing.T) smtp.Upstream {
	t.Helper()
	u, err := f.d.Dial(context.Background(), nil, &proxy.Upstream{Account: mbox, Via: proxy.ViaGraph, Bearer: f.token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Close)
	return u
}

// send runs one transaction; it returns the final reply or error.
func send(t *testing.T, u smtp.Upstream, from string, rcpts []string, msg []byte) (string, error) {
	t.Helper()
	if err := u.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range rcpts {
		if err := u.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := u.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(msg); err != nil {
		return "", err
	}
	return w.Close()
}

func textMessage(from, subject, id string, to, cc []string, body string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\n", from)
	if len(to) > 0 {
		fmt.Fprintf(&b, "To: %s\r\n", strings.Join(to, ", "))
	}
	if len(cc) > 0 {
		fmt.Fprintf(&b, "Cc: %s\r\n", strings.Join(cc, ", "))
	}
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	if id != "" {
		fmt.Fprintf(&b, "Message-ID: <%s>\r\n", id)
	}
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body)
	return []byte(b.String())
}

// attachmentMessage is multipart/mixed with a text body and attachments
// of the given sizes (random bytes, base64), returning their SHA-256s.
func attachmentMessage(from, subject, id string, to []string, sizes ...int) ([]byte, [][32]byte) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s>\r\nMIME-Version: 1.0\r\n", from, strings.Join(to, ", "), subject, id)
	b.WriteString("Content-Type: multipart/mixed; boundary=\"BOUNDARY\"\r\n\r\nThis is a multi-part message.\r\n")
	b.WriteString("--BOUNDARY\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the attachments.\r\n")
	var sums [][32]byte
	for i, n := range sizes {
		data := make([]byte, n)
		rand.Read(data)
		sums = append(sums, sha256.Sum256(data))
		fmt.Fprintf(&b, "--BOUNDARY\r\nContent-Type: application/octet-stream; name=\"file%d.bin\"\r\nContent-Disposition: attachment; filename=\"file%d.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", i, i)
		enc := base64.StdEncoding.EncodeToString(data)
		for len(enc) > 76 {
			b.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc + "\r\n")
	}
	b.WriteString("--BOUNDARY--\r\n")
	return b.Bytes(), sums
}

func sentOnly(t *testing.T, g *m365sim.Graph) m365sim.GraphMessage {
	t.Helper()
	sent := g.Sent()
	if len(sent) != 1 {
		t.Fatalf("Graph sent %d messages, want 1", len(sent))
	}
	return sent[0]
}

func TestSendMailSmall(t *testing.T) {
	f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true})
	u := f.dial(t)
	reply, err := send(t, u, mbox, []string{other}, textMessage(mbox, "hello", "small.1@test", []string{other}, nil, "hi\r\n"))
	if err != nil {
		t.Fatalf("send: %v\n%s", err, f.log)
	}
	if !strings.HasPrefix(reply, "2.0.0 OK <") {
		t.Fatalf("reply %q", reply)
	}
	m := sentOnly(t, f.g)
	if m.Via != m365sim.GraphSendMail || m.Subject != "hello" || m.MessageID != "<small.1@test>" || !slices.Equal(m.Recipients, []string{other}) {
		t.Fatalf("sent %+v", m)
	}
	if f.g.SentItems(mbox) != 1 {
		t.Fatalf("Sent Items has %d, want 1", f.g.SentItems(mbox))
	}
}

func TestEnvelopeDecides(t *testing.T) {
	f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true})
	u := f.dial(t)
	// Header: To other, Cc outside (no RCPT); envelope: other and a Bcc.
	bcc := "bcc@contoso.onmicrosoft.com"
	msg := textMessage(mbox, "envelope", "env.1@test", []string{"Other <" + other + ">"}, []string{outside}, "hi\r\n")
	if _, err := send(t, u, mbox, []string{other, bcc}, msg); err != nil {
		t.Fatalf("send: %v\n%s", err, f.log)
	}
	m := sentOnly(t, f.g)
	if m.Via != m365sim.GraphSend || !slices.Equal(m.To, []string{other}) || len(m.Cc) != 0 || !slices.Equal(m.Bcc, []string{bcc}) {
		t.Fatalf("sent via %s to %v cc %v bcc %v, want draft to other, bcc %s", m.Via, m.To, m.Cc, m.Bcc, bcc)
	}
	if f.g.Drafts(mbox) != 0 {
		t.Fatalf("a draft was left")
	}
}

func TestMessageIDAdded(t *testing.T) {
	f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true, Hostname: "broker.test"})
	u := f.dial(t)
	if _, err := send(t, u, mbox, []string{other}, textMessage(mbox, "noid", "", []string{other}, nil, "x\r\n")); err != nil {
		t.Fatal(err)
	}
	if m := sentOnly(t, f.g); !strings.HasSuffix(m.MessageID, "@broker.test>") {
		t.Fatalf("Message-ID %q", m.MessageID)
	}
}

func TestLargeAttachments(t *testing.T) {
	f := newFixture(t, m365sim.GraphOptions{ChunkMultiple: 320 << 10}, graph.Options{SaveToSentItems: false})
	u := f.dial(t)
	msg, sums := attachmentMessage(mbox, "big", "big.1@test", []string{other}, 9<<20+12345, 100<<10, 1<<20, 2<<20+1)
	if _, err := send(t, u, mbox, []string{other}, msg); err != nil {
		t.Fatalf("send: %v\n%s", err, f.log)
	}
	m := sentOnly(t, f.g)
	if m.Via != m365sim.GraphSend || m.SaveToSentItems || m.Subject != "big" || m.MessageID != "<big.1@test>" {
		t.Fatalf("sent %+v", m)
	}
	if m.TextBody != "See the attachments.\r\n" && m.TextBody != "See the attachments." {
		t.Fatalf("body %q", m.TextBody)
	}
	var got [][32]byte
	for _, a := range m.Attachments {
		got = append(got, a.SHA256)
	}
	for i, s := range sums {
		if !slices.Contains(got, s) {
			t.Fatalf("attachment %d missing or changed; got %d attachments", i, len(got))
		}
	}
	if f.g.SentItems(mbox) != 0 || f.g.Drafts(mbox) != 0 {
		t.Fatalf("Sent Items %d, Drafts %d; want none", f.g.SentItems(mbox), f.g.Drafts(mbox))
	}
}

func TestThrottled(t *testing.T) {
	f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true})
	u := f.dial(t)
	f.g.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 429, RetryAfter: time.Second})
	f.g.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 503})
	start := time.Now()
	if _, err := send(t, u, mbox, []string{other}, textMessage(mbox, "t", "t.1@test", []string{other}, nil, "x\r\n")); err != nil {
		t.Fatalf("send: %v\n%s", err, f.log)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("sent after %v, before the Retry-After", d)
	}
	sentOnly(t, f.g)
}

func TestThrottledBeyondBudget(t *testing.T) {
	f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true, RetryBudget: 2 * time.Second})
	u := f.dial(t)
	f.g.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 429, RetryAfter: 5 * time.Second})
	_, err := send(t, u, mbox, []string{other}, textMessage(mbox, "t", "t.2@test", []string{other}, nil, "x\r\n"))
	checkReply(t, err, 451, gosmtp.EnhancedCode{4, 4, 5})
}

func checkReply(t *testing.T, err error, code int, ec gosmtp.EnhancedCode) {
	t.Helper()
	var se *gosmtp.SMTPError
	if !errors.As(err, &se) || se.Code != code || se.EnhancedCode != ec {
		t.Fatalf("got %v, want %d %v", err, code, ec)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(*fixture)
		from   string
		code   int
		ec     gosmtp.EnhancedCode
		advice string
	}{
		{"send as", nil, other, 550, gosmtp.EnhancedCode{5, 7, 60}, "Add-RecipientPermission"},
		{"REST disabled", func(f *fixture) { f.g.DisableREST(mbox) }, mbox, 451, gosmtp.EnhancedCode{4, 7, 0}, "Exchange Online licence"},
		{"access policy", func(f *fixture) { f.g.SetAccessPolicy(clientID, other) }, mbox, 451, gosmtp.EnhancedCode{4, 7, 0}, "New-ApplicationAccessPolicy"},
		{"size", func(f *fixture) {
			f.g.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 400, Code: "ErrorMessageSizeExceeded", Message: "too big"})
		}, mbox, 552, gosmtp.EnhancedCode{5, 3, 4}, "MaxSendSize"},
		{"access denied", func(f *fixture) {
			f.g.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 403, Code: "ErrorAccessDenied", Message: "Access is denied."})
		}, mbox, 451, gosmtp.EnhancedCode{4, 7, 0}, "Mail.Send"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true})
			if tc.setup != nil {
				tc.setup(f)
			}
			u := f.dial(t)
			w := mustData(t, u, tc.from, other, textMessage(tc.from, "e", "e.1@test", []string{other}, nil, "x\r\n"))
			_, err := w.Close()
			checkReply(t, err, tc.code, tc.ec)
			attrs := fmt.Sprint(w.(interface{ LogAttrs() []any }).LogAttrs()...)
			if !strings.Contains(attrs, tc.advice) {
				t.Fatalf("log attributes %s, want advice with %q", attrs, tc.advice)
			}
		})
	}
}

func mustData(t *testing.T, u smtp.Upstream, from, to string, msg []byte) smtp.MessageWriter {
	t.Helper()
	if err := u.Mail(from, nil); err != nil {
		t.Fatal(err)
	}
	if err := u.Rcpt(to, nil); err != nil {
		t.Fatal(err)
	}
	w, err := u.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(msg)
	return w
}

func TestOutcomeUnknown(t *testing.T) {
	t.Run("found", func(t *testing.T) {
		f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true})
		u := f.dial(t)
		f.g.DropAfterAccept(1)
		reply, err := send(t, u, mbox, []string{other}, textMessage(mbox, "u", "u.1@test", []string{other}, nil, "x\r\n"))
		if err != nil || !strings.Contains(reply, "Sent Items") {
			t.Fatalf("got %q %v, want 250 found in Sent Items\n%s", reply, err, f.log)
		}
		sentOnly(t, f.g)
	})
	t.Run("not saved", func(t *testing.T) {
		f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true})
		u := f.dial(t)
		f.g.DropAfterAccept(1)
		f.g.FailNext(m365sim.GraphListMessages, m365sim.GraphError{Status: 403, Code: "ErrorAccessDenied", Message: "Access is denied."})
		_, err := send(t, u, mbox, []string{other}, textMessage(mbox, "u", "u.2@test", []string{other}, nil, "x\r\n"))
		checkReply(t, err, 451, gosmtp.EnhancedCode{4, 4, 2})
	})
}

func TestHeaderTooLarge(t *testing.T) {
	f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true})
	u := f.dial(t)
	msg := textMessage(mbox, "big header", "h.1@test", []string{other}, nil, "x\r\n")
	msg = append([]byte("X-Padding: "+strings.Repeat("p", 2<<20)+"\r\n"), msg...)
	w := mustData(t, u, mbox, other, msg)
	_, err := w.Close()
	checkReply(t, err, 554, gosmtp.EnhancedCode{5, 6, 0})
	if n := len(f.g.Sent()); n != 0 {
		t.Fatalf("%d messages sent, want none", n)
	}
}

// A token Graph refuses during a message is reported to the token source
// and replaced once; a second refusal is a temporary failure with advice.
func TestTokenRefused(t *testing.T) {
	for _, tc := range []struct {
		name     string
		refusals int
	}{{"once", 1}, {"twice", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true})
			var rejected, issued []string
			bearer := func(ctx context.Context) (string, error) {
				tok, err := f.token(ctx)
				issued = append(issued, tok)
				return tok, err
			}
			u, err := f.d.Dial(context.Background(), nil, &proxy.Upstream{Account: mbox, Via: proxy.ViaGraph,
				Bearer: bearer, BearerRejected: func(tok string) { rejected = append(rejected, tok) }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(u.Close)
			for range tc.refusals {
				f.g.FailNext(m365sim.GraphSendMail, m365sim.GraphError{Status: 401, Code: "InvalidAuthenticationToken",
					Message: "Lifetime validation failed, the token is expired."})
			}
			w := mustData(t, u, mbox, other, textMessage(mbox, "r", "r.1@test", []string{other}, nil, "x\r\n"))
			_, err = w.Close()
			// Tokens: the login's, the message's, its replacement.
			if len(issued) != 3 || len(rejected) != 1 || rejected[0] != issued[1] {
				t.Fatalf("%d tokens issued, %d rejected; want 3, and the message's first one rejected", len(issued), len(rejected))
			}
			attrs := fmt.Sprint(w.(interface{ LogAttrs() []any }).LogAttrs()...)
			if tc.refusals == 1 {
				if err != nil {
					t.Fatalf("after one refusal: %v, want sent", err)
				}
				sentOnly(t, f.g)
				return
			}
			checkReply(t, err, 451, gosmtp.EnhancedCode{4, 7, 0})
			if !strings.Contains(attrs, "graph_url") {
				t.Fatalf("log attributes %s, want the advice", attrs)
			}
			if n := len(f.g.Sent()); n != 0 {
				t.Fatalf("%d messages sent, want none", n)
			}
		})
	}
}

type recordingObserver struct {
	proxy.NopObserver
	mu            sync.Mutex
	connect, auth []error
}

func (o *recordingObserver) UpstreamConnect(p proxy.Protocol, _ time.Duration, err error) {
	if p != proxy.SMTP {
		panic("protocol " + p)
	}
	o.mu.Lock()
	o.connect = append(o.connect, err)
	o.mu.Unlock()
}

func (o *recordingObserver) UpstreamAuth(p proxy.Protocol, _ time.Duration, err error) {
	if p != proxy.SMTP {
		panic("protocol " + p)
	}
	o.mu.Lock()
	o.auth = append(o.auth, err)
	o.mu.Unlock()
}

func (o *recordingObserver) counts() (connOK, connErr, authOK, authErr int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range o.connect {
		if e == nil {
			connOK++
		} else {
			connErr++
		}
	}
	for _, e := range o.auth {
		if e == nil {
			authOK++
		} else {
			authErr++
		}
	}
	return
}

// Graph's connections and token fetches count as the SMTP upstream's.
func TestObserver(t *testing.T) {
	obs := &recordingObserver{}
	f := newFixture(t, m365sim.GraphOptions{}, graph.Options{SaveToSentItems: true, Observer: obs})
	u := f.dial(t)
	for i := range 2 {
		id := fmt.Sprintf("o.%d@test", i)
		if _, err := send(t, u, mbox, []string{other}, textMessage(mbox, "o", id, []string{other}, nil, "x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if connOK, connErr, authOK, authErr := obs.counts(); connOK != 1 || connErr != 0 || authOK != 1 || authErr != 0 {
		t.Fatalf("connects %d ok %d failed, auths %d ok %d failed; want one connection (kept alive) and the login's token",
			connOK, connErr, authOK, authErr)
	}

	// Graph unreachable: a failed connection.
	obs2 := &recordingObserver{}
	d := graph.NewDialer(&graph.Options{URL: func(string) string { return "https://127.0.0.1:1" }, Observer: obs2,
		RetryBudget: time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(d.Close)
	u2, err := d.Dial(context.Background(), nil, &proxy.Upstream{Account: mbox, Via: proxy.ViaGraph, Bearer: f.token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u2.Close)
	if _, err := send(t, u2, mbox, []string{other}, textMessage(mbox, "o", "o.x@test", []string{other}, nil, "x\r\n")); err == nil {
		t.Fatal("sent through an unreachable Graph")
	}
	if _, connErr, authOK, _ := obs2.counts(); connErr == 0 || authOK != 1 {
		t.Fatalf("%d failed connections, %d tokens; want at least one and one", connErr, authOK)
	}
}
