package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

var testAccount = &config.Account{
	Mailbox:   "shared@contoso.com",
	LoginUser: "agent@contoso.com",
	Flow:      config.FlowAuthCode,
	App:       &config.App{Name: "contoso", RedirectURI: "http://localhost", Cloud: config.CloudByName("global")},
}

// fakeAuthCode checks addresses like broker's: state "good", and a code.
type fakeAuthCode struct {
	redirects chan string // the redirect URI of each request
	redeemed  []string
	redeemErr error
}

func (f *fakeAuthCode) AuthCodeRequest(redirectURI string) *broker.AuthRequest {
	if f.redirects != nil {
		f.redirects <- redirectURI
	}
	return &broker.AuthRequest{URL: "https://login.example/authorize?x=1", RedirectURI: redirectURI}
}

func (f *fakeAuthCode) CheckRedirect(_ *broker.AuthRequest, redirected string) error {
	u, err := url.Parse(redirected)
	switch {
	case err != nil || !strings.Contains(redirected, "?"):
		return errors.New("that is not the address the browser ended on")
	case u.Query().Get("error") != "":
		return errors.New("sign-in failed: " + u.Query().Get("error"))
	case u.Query().Get("state") != "good":
		return errors.New("the address belongs to another sign-in")
	}
	return nil
}

func (f *fakeAuthCode) Redeem(_ context.Context, _ *broker.AuthRequest, redirected string) (*broker.Credentials, error) {
	f.redeemed = append(f.redeemed, redirected)
	if f.redeemErr != nil {
		return nil, f.redeemErr
	}
	return &broker.Credentials{User: "agent@contoso.com", AccessToken: "at", RefreshToken: "rt", ExpiresIn: 3600}, nil
}

func testIO(stdin string) (*loginIO, *bytes.Buffer, *bytes.Buffer) {
	var out, errw bytes.Buffer
	r := strings.NewReader(stdin)
	return &loginIO{in: newLineReader(r), stdin: r, out: &out, err: &errw}, &out, &errw
}

func TestLoginPaste(t *testing.T) {
	const good = "http://localhost/?code=abc&state=good&session_state=x"
	tests := []struct {
		name      string
		stdin     string
		redeemErr error
		wantErr   string
		redeemed  int
		retries   int // "Paste it again" prompts
	}{
		{"first try", good + "\n", nil, "", 1, 0},
		{"blank lines and CRLF", "\n  \n" + good + "\r\n", nil, "", 1, 0},
		{"wrong state, then right", "http://localhost/?code=old&state=other\n" + good + "\n", nil, "", 1, 1},
		{"not an address, then right", "abc\n" + good + "\n", nil, "", 1, 1},
		{"three mistakes", "x\ny\nz\n" + good + "\n", nil, "not the address", 0, 2},
		{"input ends", "x\n", nil, "standard input ended", 0, 1},
		{"no newline at the end", good, nil, "", 1, 0},
		// A code refused by the token endpoint needs a new sign-in: no
		// second paste of the same one.
		{"redeem fails", good + "\n" + good + "\n", errors.New("AADSTS54005: already redeemed"), "54005", 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeAuthCode{redeemErr: tt.redeemErr}
			tio, out, errw := testIO(tt.stdin)
			creds, err := loginPaste(context.Background(), f, testAccount, tio)
			if tt.wantErr == "" && (err != nil || creds == nil) {
				t.Fatalf("got %v, %v; want credentials", creds, err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got error %v, want %q", err, tt.wantErr)
			}
			if len(f.redeemed) != tt.redeemed {
				t.Fatalf("redeemed %q, want %d", f.redeemed, tt.redeemed)
			}
			if n := strings.Count(errw.String(), "Paste it again"); n != tt.retries {
				t.Fatalf("asked to paste again %d times, want %d:\n%s", n, tt.retries, errw)
			}
			for _, want := range []string{"https://login.example/authorize?x=1", "agent@contoso.com", "http://localhost/?code=", "fails to load"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("instructions lack %q:\n%s", want, out)
				}
			}
			if tt.redeemed == 1 && f.redeemed[0] != good {
				t.Errorf("redeemed %q, want %q", f.redeemed[0], good)
			}
		})
	}
}

func TestLoginPasteCancelled(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	tio := &loginIO{in: newLineReader(pr), stdin: pr, out: io.Discard, err: io.Discard}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := loginPaste(ctx, &fakeAuthCode{}, testAccount, tio)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the wait for input to end on cancel", err)
	}
}

func TestLoopbackRedirect(t *testing.T) {
	tests := []struct{ app, want string }{
		{"http://localhost", "http://localhost:8400"},
		{"http://localhost/", "http://localhost:8400/"},
		{"http://localhost/broker/callback", "http://localhost:8400/broker/callback"},
		{"http://127.0.0.1", "http://127.0.0.1:8400"},
		{"https://app.contoso.com/callback", ""},
	}
	for _, tt := range tests {
		got, err := loopbackRedirect(tt.app, 8400)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("loopbackRedirect(%q) = %q, %v; want %q", tt.app, got, err, tt.want)
		}
	}
}

// The loopback listener ignores other requests, serves the one with a
// code, redeems its full address and answers the browser.
func TestLoginLoopback(t *testing.T) {
	f := &fakeAuthCode{redirects: make(chan string, 1)}
	tio, out, _ := testIO("")
	type result struct {
		creds *broker.Credentials
		err   error
	}
	done := make(chan result, 1)
	go func() {
		creds, err := loginLoopback(context.Background(), f, testAccount, 0, false, tio)
		done <- result{creds, err}
	}()
	redirect := <-f.redirects
	if !strings.HasPrefix(redirect, "http://localhost:") || strings.HasSuffix(redirect, "/") {
		t.Fatalf("redirect URI %q, want http://localhost:PORT as registered, without a path", redirect)
	}
	base := strings.Replace(redirect, "localhost", "127.0.0.1", 1) + "/"
	if resp, err := http.Get(base + "favicon.ico"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("favicon: got %v, %v; want 404", resp, err)
	}
	resp, err := http.Get(base + "?code=abc&state=good")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "You can close this window") {
		t.Fatalf("the browser got %q", page)
	}
	r := <-done
	if r.err != nil || r.creds == nil {
		t.Fatalf("got %v, %v", r.creds, r.err)
	}
	if want := redirect + "/?code=abc&state=good"; len(f.redeemed) != 1 || f.redeemed[0] != want {
		t.Fatalf("redeemed %q, want %q", f.redeemed, want)
	}
	if !strings.Contains(out.String(), "https://login.example/authorize?x=1") {
		t.Fatalf("the URL was not printed:\n%s", out)
	}
}

// An error in the address reaches both the browser and the command.
func TestLoginLoopbackError(t *testing.T) {
	f := &fakeAuthCode{redirects: make(chan string, 1)}
	tio, _, _ := testIO("")
	done := make(chan error, 1)
	go func() {
		_, err := loginLoopback(context.Background(), f, testAccount, 0, false, tio)
		done <- err
	}()
	base := strings.Replace(<-f.redirects, "localhost", "127.0.0.1", 1)
	resp, err := http.Get(base + "?error=access_denied&state=good")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "access_denied") {
		t.Fatalf("the browser got %q", page)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "access_denied") {
		t.Fatalf("got %v, want the sign-in's error", err)
	}
	if len(f.redeemed) != 0 {
		t.Fatalf("redeemed %q after an error", f.redeemed)
	}
}

type fakeDevice struct {
	polls int
}

func (f *fakeDevice) StartDeviceCode(context.Context) (*broker.DeviceCode, error) {
	return &broker.DeviceCode{UserCode: "ABCD2345X", VerificationURI: "https://microsoft.com/devicelogin",
		Message: "To sign in, use a web browser.", ExpiresAt: testNow.Add(15 * time.Minute), Interval: 5 * time.Second}, nil
}

func (f *fakeDevice) PollDeviceCode(ctx context.Context, dc *broker.DeviceCode, wait func(context.Context, time.Duration) error) (*broker.Credentials, error) {
	for range 20 { // 100 s
		f.polls++
		if err := wait(ctx, dc.Interval); err != nil {
			return nil, err
		}
	}
	return &broker.Credentials{User: "agent@contoso.com"}, nil
}

var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fakeClock is moved by its sleep.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }
func (c *fakeClock) sleep(ctx context.Context, d time.Duration) error {
	c.t = c.t.Add(d)
	return ctx.Err()
}

func TestLoginDeviceCode(t *testing.T) {
	clock := &fakeClock{testNow}
	tio, out, errw := testIO("")
	f := &fakeDevice{}
	dc, _ := f.StartDeviceCode(context.Background())
	cd := &countdown{w: tio.err, expires: dc.ExpiresAt, now: clock.now, sleep: clock.sleep}
	if _, err := f.PollDeviceCode(context.Background(), dc, cd.wait); err != nil {
		t.Fatal(err)
	}
	// Not a terminal: a line at once and every 30 s of the 100 s.
	want := "Waiting for the sign-in: 15:00 left\nWaiting for the sign-in: 14:30 left\nWaiting for the sign-in: 14:00 left\nWaiting for the sign-in: 13:30 left\n"
	if errw.String() != want {
		t.Fatalf("progress:\n%s\nwant:\n%s", errw, want)
	}

	errw.Reset()
	clock = &fakeClock{testNow}
	if _, err := loginDeviceCode(context.Background(), &fakeDevice{}, testAccount, tio, clock.now, clock.sleep); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(errw.String(), "Waiting for the sign-in: 15:00 left\n") {
		t.Errorf("progress:\n%s", errw)
	}
	for _, want := range []string{"\n    https://microsoft.com/devicelogin\n", "\n    ABCD2345X\n", "sign in as agent@contoso.com", "To sign in, use a web browser."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestCountdownTerminal(t *testing.T) {
	clock := &fakeClock{testNow}
	var w bytes.Buffer
	cd := &countdown{w: &w, tty: true, expires: testNow.Add(2 * time.Minute), now: clock.now, sleep: clock.sleep}
	if err := cd.wait(context.Background(), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	cd.finish()
	want := "\rWaiting for the sign-in: 2:00 left \rWaiting for the sign-in: 1:59 left \rWaiting for the sign-in: 1:58 left \r\033[K"
	if w.String() != want {
		t.Fatalf("got %q, want %q", w.String(), want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := cd.wait(ctx, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait after cancel: %v", err)
	}
}

type fakePassword struct{ got string }

func (f *fakePassword) Password(_ context.Context, pw string) (*broker.Credentials, error) {
	f.got = pw
	return &broker.Credentials{Password: pw}, nil
}

// Without a terminal the password is one line of standard input, spaces
// kept; the warning goes to standard error.
func TestLoginPasswordFromPipe(t *testing.T) {
	tio, out, errw := testIO(" pass word \r\nnext\n")
	f := &fakePassword{}
	if _, err := loginPassword(context.Background(), f, testAccount, tio); err != nil {
		t.Fatal(err)
	}
	if f.got != " pass word " {
		t.Fatalf("password %q, want \" pass word \"", f.got)
	}
	if !strings.Contains(errw.String(), "cannot satisfy multi-factor") || !strings.Contains(errw.String(), "retiring") || out.Len() != 0 {
		t.Fatalf("stderr %q, stdout %q", errw, out)
	}
	tio, _, _ = testIO("")
	if _, err := loginPassword(context.Background(), f, testAccount, tio); err == nil || !strings.Contains(err.Error(), "ended before the password") {
		t.Fatalf("empty input: got %v", err)
	}
}

func TestResolveScope(t *testing.T) {
	for in, want := range map[string]string{
		"":        "",
		"outlook": "",
		"Graph":   "https://graph.microsoft.com/.default",
		"https://graph.microsoft.com/Presence.Read  offline_access": "https://graph.microsoft.com/Presence.Read offline_access",
	} {
		if got := resolveScope(testAccount, in); got != want {
			t.Errorf("resolveScope(%q) = %q, want %q", in, got, want)
		}
	}
}
