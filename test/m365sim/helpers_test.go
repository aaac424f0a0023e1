package m365sim

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	domain     = "contoso.onmicrosoft.com"
	confID     = "6f1c4a2e-93f4-4f55-9a4e-1b2c3d4e5f60"
	publicID   = "0d9b7e3a-5c21-4c8e-8f3b-a1b2c3d4e5f6"
	noFlowsID  = "7a7a7a7a-1111-4222-8333-944444444444"
	secret     = "Xy8Q~abc.DEF_ghi-123"
	alice      = "alice@contoso.onmicrosoft.com"
	alicePass  = "correct horse"
	bob        = "bob@contoso.onmicrosoft.com"
	outlookDef = "https://outlook.office365.com/.default"
)

// clock is a settable clock for EntraOptions.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	e     *Entra
	clock *clock
	tid   string
}

// newFixture starts an Entra with one tenant: a confidential app with IMAP
// and SMTP roles and FullAccess to alice, a public client, a public app
// without public client flows, and the users alice and bob.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)}
	e, err := NewEntra(EntraOptions{Now: c.Now})
	if err != nil {
		t.Fatalf("NewEntra: %v", err)
	}
	t.Cleanup(e.Close)
	tid := e.AddTenant(domain)
	e.AddApp(App{Tenant: domain, ClientID: confID, Secret: secret, Roles: []string{"IMAP.AccessAsApp", "SMTP.SendAsApp", "https://graph.microsoft.com/Mail.Send"}, Mailboxes: []string{alice}})
	e.AddApp(App{Tenant: tid, ClientID: publicID, PublicClientFlows: true})
	e.AddApp(App{Tenant: domain, ClientID: noFlowsID})
	e.AddUser(domain, alice, alicePass)
	e.AddUser(domain, bob, "bob's password")
	return &fixture{e: e, clock: c, tid: tid}
}

func (f *fixture) tokenURL(tenant string) string {
	return f.e.URL() + "/" + tenant + "/oauth2/v2.0/token"
}

// post sends a form and returns the status and body.
func post(t *testing.T, u string, form url.Values) (int, []byte) {
	t.Helper()
	resp, err := http.PostForm(u, form)
	if err != nil {
		t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", u, err)
	}
	return resp.StatusCode, body
}

// token posts to the token endpoint of tenant and decodes a success.
func (f *fixture) token(t *testing.T, tenant string, form url.Values) *tokenResponse {
	t.Helper()
	status, body := post(t, f.tokenURL(tenant), form)
	if status != http.StatusOK {
		t.Fatalf("token: got %d %s, want 200", status, body)
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
	return &tr
}

// tokenError posts to the token endpoint of tenant and decodes a failure.
func (f *fixture) tokenError(t *testing.T, tenant string, form url.Values) (int, *errorBody) {
	t.Helper()
	status, body := post(t, f.tokenURL(tenant), form)
	return status, decodeError(t, status, body)
}

func decodeError(t *testing.T, status int, body []byte) *errorBody {
	t.Helper()
	if status == http.StatusOK {
		t.Fatalf("got 200 %s, want an error", body)
	}
	var eb errorBody
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
	return &eb
}

// checkError compares an error answer with the expected status, error and
// AADSTS code, and checks the parts Entra always sends.
func checkError(t *testing.T, status int, eb *errorBody, wantStatus int, wantErr string, wantCode int) {
	t.Helper()
	if status != wantStatus || eb.Error != wantErr {
		t.Fatalf("got %d %q, want %d %q (%s)", status, eb.Error, wantStatus, wantErr, eb.ErrorDescription)
	}
	if len(eb.ErrorCodes) != 1 || eb.ErrorCodes[0] != wantCode {
		t.Fatalf("error_codes: got %v, want [%d]", eb.ErrorCodes, wantCode)
	}
	prefix := "AADSTS" + strconv.Itoa(wantCode) + ": "
	if !strings.HasPrefix(eb.ErrorDescription, prefix) {
		t.Fatalf("error_description: got %q, want prefix %q", eb.ErrorDescription, prefix)
	}
	for _, part := range []string{"\r\nTrace ID: " + eb.TraceID, "\r\nCorrelation ID: " + eb.CorrelationID, "\r\nTimestamp: " + eb.Timestamp} {
		if !strings.Contains(eb.ErrorDescription, part) {
			t.Fatalf("error_description %q lacks %q", eb.ErrorDescription, part)
		}
	}
	if !isGUID(eb.TraceID) || !isGUID(eb.CorrelationID) {
		t.Fatalf("trace_id %q, correlation_id %q: want GUIDs", eb.TraceID, eb.CorrelationID)
	}
	if want := "https://login.microsoftonline.com/error?code=" + strconv.Itoa(wantCode); eb.ErrorURI != want {
		t.Fatalf("error_uri: got %q, want %q", eb.ErrorURI, want)
	}
}

func form(kv ...string) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

var guidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func isGUID(s string) bool { return guidRE.MatchString(s) }
