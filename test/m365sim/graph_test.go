package m365sim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

const (
	graphAppID  = "3c3c3c3c-2222-4333-8444-955555555555"
	graphDef    = "https://graph.microsoft.com/.default"
	graphCarol  = "carol@example.net"
	graphDave   = "dave@contoso.onmicrosoft.com"
	graphScopes = "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Read"
)

type graphFixture struct {
	*fixture
	g    *Graph
	imap *IMAP
	c    *http.Client
}

// newGraph starts Entra, IMAP (alice, bob) and Graph, with an app holding
// Mail.Send, Mail.ReadWrite and Mail.Read, scoped to alice.
func newGraph(t *testing.T, opts GraphOptions) *graphFixture {
	t.Helper()
	f := newFixture(t)
	s := newIMAP(t, f.e)
	opts.IMAP = s
	g, err := NewGraph(f.e, opts)
	if err != nil {
		t.Fatalf("NewGraph: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	f.e.AddApp(App{Tenant: domain, ClientID: graphAppID, Secret: secret, Mailboxes: []string{alice},
		Roles: []string{"https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite", "https://graph.microsoft.com/Mail.Read"}})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(g.CACertPEM()) {
		t.Fatalf("CACertPEM: no certificate")
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 60 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return &graphFixture{fixture: f, g: g, imap: s, c: c}
}

func (gf *graphFixture) appToken(t *testing.T, clientID string) string {
	t.Helper()
	return gf.token(t, domain, form("grant_type", "client_credentials", "client_id", clientID, "client_secret", secret, "scope", graphDef)).AccessToken
}

func (gf *graphFixture) userToken(t *testing.T, upn, password, scope string) string {
	t.Helper()
	return gf.token(t, domain, ropc(upn, password, scope)).AccessToken
}

type graphResp struct {
	status int
	header http.Header
	body   []byte
}

func (r *graphResp) err(t *testing.T) graphErrorJSON {
	t.Helper()
	var eb graphErrorBody
	if err := json.Unmarshal(r.body, &eb); err != nil {
		t.Fatalf("decoding error %d %s: %v", r.status, r.body, err)
	}
	return eb.Error
}

// do sends a request; path is below the service root unless it is a URL.
func (gf *graphFixture) do(t *testing.T, method, path, token, contentType string, body []byte, hdr ...string) *graphResp {
	t.Helper()
	u := path
	if !strings.HasPrefix(path, "https://") {
		u = gf.g.URL() + path
	}
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := gf.c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s %s: %v", method, path, err)
	}
	return &graphResp{status: resp.StatusCode, header: resp.Header, body: b}
}

func (gf *graphFixture) doJSON(t *testing.T, method, path, token string, v any) *graphResp {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return gf.do(t, method, path, token, "application/json", b)
}

func wantGraphError(t *testing.T, r *graphResp, status int, code, msgPart string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("got %d %s, want %d %s", r.status, r.body, status, code)
	}
	e := r.err(t)
	if e.Code != code || !strings.Contains(e.Message, msgPart) {
		t.Fatalf("got %s %q, want %s containing %q", e.Code, e.Message, code, msgPart)
	}
	if !isGUID(e.InnerError.RequestID) || e.InnerError.ClientRequestID == "" {
		t.Fatalf("innerError: got %+v", e.InnerError)
	}
	if _, err := time.Parse("2006-01-02T15:04:05", e.InnerError.Date); err != nil {
		t.Fatalf("innerError.date %q: %v", e.InnerError.Date, err)
	}
}

func graphB64(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) }

func graphMIME(from, subject, msgID string, hdr ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nSubject: %s\r\nMessage-ID: %s\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n", from, subject, msgID)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello from the simulator.\r\n")
	return []byte(b.String())
}

// imapMessages fetches the messages of a folder of mailbox.
func (gf *graphFixture) imapMessages(t *testing.T, mailbox, folder string) [][]byte {
	t.Helper()
	c := login(t, gf.imap, mailbox, appAccessTokenFor(t, gf.fixture, bob))
	if _, err := c.Select(folder, nil).Wait(); err != nil {
		t.Fatalf("SELECT %s: %v", folder, err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		if strings.Contains(err.Error(), "No matching messages") || strings.Contains(err.Error(), "Invalid messageset") {
			return nil
		}
		t.Fatalf("FETCH: %v", err)
	}
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i] = m.FindBodySection(section)
	}
	return out
}

func TestGraphSendMailMIME(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	msg := graphMIME(alice, "MIME send", "<mime-1@contoso.example>", "To", "Bob <"+bob+">", "Cc", graphCarol, "Bcc", graphDave, "X-Broker-Test", "yes")
	r := gf.do(t, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "text/plain", graphB64(msg), "client-request-id", "4f4f4f4f-0000-4000-8000-000000000001")
	if r.status != http.StatusAccepted || len(r.body) != 0 {
		t.Fatalf("sendMail: got %d %s, want 202", r.status, r.body)
	}
	if r.header.Get("client-request-id") != "4f4f4f4f-0000-4000-8000-000000000001" || !isGUID(r.header.Get("request-id")) {
		t.Fatalf("headers: %v", r.header)
	}
	sent := gf.g.Sent()
	if len(sent) != 1 {
		t.Fatalf("Sent: got %d, want 1", len(sent))
	}
	m := sent[0]
	if m.Via != GraphSendMail || m.Mailbox != alice || m.AppID != graphAppID || m.User != "" || m.From != alice ||
		m.Subject != "MIME send" || m.MessageID != "<mime-1@contoso.example>" || !m.SaveToSentItems ||
		!slices.Equal(m.Recipients, []string{bob, graphCarol, graphDave}) || !slices.Equal(m.Bcc, []string{graphDave}) ||
		m.BodyType != "text" || m.Body != "Hello from the simulator.\r\n" {
		t.Fatalf("Sent()[0]: got %+v", m)
	}
	if len(m.Headers) != 1 || m.Headers[0] != (GraphHeader{"X-Broker-Test", "yes"}) {
		t.Fatalf("headers: got %v", m.Headers)
	}
	if m.MIME == nil || sha256.Sum256(m.MIME) != m.SHA256 || int64(len(m.MIME)) != m.Size {
		t.Fatalf("MIME: %d bytes, Size %d", len(m.MIME), m.Size)
	}
	// Delivered to bob (an IMAP mailbox) without Bcc; graphDave and graphCarol have
	// no mailbox here.
	inbox := gf.imapMessages(t, bob, "INBOX")
	got := inbox[len(inbox)-1]
	pm, err := mail.ReadMessage(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	if pm.Header.Get("Subject") != "MIME send" || pm.Header.Get("Message-Id") != "<mime-1@contoso.example>" || pm.Header.Get("Bcc") != "" || pm.Header.Get("X-Broker-Test") != "yes" {
		t.Fatalf("delivered header: %v", pm.Header)
	}
	// The sender's copy in Sent Items keeps Bcc.
	sentItems := gf.imapMessages(t, alice, "Sent Items")
	if len(sentItems) != 1 || !bytes.Contains(sentItems[0], []byte("Bcc: <"+graphDave+">")) {
		t.Fatalf("Sent Items: got %q", sentItems)
	}
	// Graph finds it by its Message-ID.
	q := url.Values{"$filter": {"internetMessageId eq '<mime-1@contoso.example>'"}}
	r = gf.do(t, "GET", "/v1.0/users/"+alice+"/mailFolders/SentItems/messages?"+q.Encode(), tok, "", nil)
	var list struct {
		Value []graphMessageOut `json:"value"`
	}
	if r.status != 200 || json.Unmarshal(r.body, &list) != nil || len(list.Value) != 1 || list.Value[0].InternetMessageID != "<mime-1@contoso.example>" || list.Value[0].IsDraft {
		t.Fatalf("sent items: got %d %s", r.status, r.body)
	}
	q.Set("$filter", "internetMessageId eq '<other@x>'")
	r = gf.do(t, "GET", "/v1.0/users/"+alice+"/mailFolders/sentitems/messages?"+q.Encode(), tok, "", nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"value":[]`)) {
		t.Fatalf("sent items, other id: got %d %s", r.status, r.body)
	}
	if n := gf.g.Requests(GraphSendMail); n != 1 {
		t.Fatalf("Requests(sendMail): got %d", n)
	}
	if n := gf.g.Requests(GraphAnyEndpoint); n != 3 {
		t.Fatalf("Requests(any): got %d", n)
	}
}

func TestGraphSendMailErrors(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	path := "/v1.0/users/" + alice + "/sendMail"
	big := bytes.Repeat([]byte("A"), 4<<20+4)
	wantGraphError(t, gf.do(t, "POST", path, tok, "text/plain", big), 413, "BadRequest", "maximum request length")
	wantGraphError(t, gf.do(t, "POST", path, tok, "text/plain", []byte("not base64!")), 400, "ErrorMimeContentInvalidBase64String", "Invalid base64")
	noRcpt := graphMIME(alice, "nobody", "<n@x>")
	wantGraphError(t, gf.do(t, "POST", path, tok, "text/plain", graphB64(noRcpt)), 400, "ErrorInvalidRecipients", "no recipients")
	asBob := graphMIME(bob, "as bob", "<b@x>", "To", graphCarol)
	wantGraphError(t, gf.do(t, "POST", path, tok, "text/plain", graphB64(asBob)), 403, "ErrorSendAsDenied", "right to send mail on behalf")
	if e := gf.g.LastError(); e == nil || e.Code != "ErrorSendAsDenied" {
		t.Fatalf("LastError: got %v", e)
	}
	// With SendAs on bob's mailbox, alice may send as bob.
	if err := gf.e.AddDelegate(domain, bob, alice); err != nil {
		t.Fatal(err)
	}
	if r := gf.do(t, "POST", path, tok, "text/plain", graphB64(asBob)); r.status != 202 {
		t.Fatalf("send as bob with SendAs: got %d %s", r.status, r.body)
	}
	wantGraphError(t, gf.do(t, "POST", path, tok, "application/xml", []byte("<x/>")), 415, "BadRequest", "not supported")
	// JSON sendMail without saving a copy.
	r := gf.doJSON(t, "POST", path, tok, map[string]any{
		"message": map[string]any{
			"subject":      "json",
			"body":         map[string]string{"contentType": "HTML", "content": "<p>hi</p>"},
			"toRecipients": []any{map[string]any{"emailAddress": map[string]string{"address": bob}}},
		},
		"saveToSentItems": false,
	})
	if r.status != 202 {
		t.Fatalf("JSON sendMail: got %d %s", r.status, r.body)
	}
	sent := gf.g.Sent()
	if m := sent[len(sent)-1]; m.SaveToSentItems || m.BodyType != "html" || m.HTMLBody != "<p>hi</p>" || !strings.HasPrefix(m.MessageID, "<SIM0PR01MB0001") {
		t.Fatalf("JSON sendMail: got %+v", m)
	}
	if n := gf.g.SentItems(alice); n != 1 {
		t.Fatalf("SentItems: got %d, want 1", n)
	}
	wantGraphError(t, gf.doJSON(t, "POST", path, tok, map[string]any{"message": map[string]any{"subjekt": "x"}}), 400, "RequestBodyRead", "'subjekt' does not exist")
}

func TestGraphAuthErrors(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	msg := graphB64(graphMIME(alice, "s", "<a@x>", "To", bob))
	path := "/v1.0/users/" + alice + "/sendMail"
	r := gf.do(t, "POST", path, "", "text/plain", msg)
	wantGraphError(t, r, 401, "InvalidAuthenticationToken", "Access token is empty")
	if !strings.Contains(r.header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("WWW-Authenticate: got %q", r.header.Get("WWW-Authenticate"))
	}
	wantGraphError(t, gf.do(t, "POST", path, "garbage", "text/plain", msg), 401, "InvalidAuthenticationToken", "")
	outlookTok := gf.token(t, domain, form("grant_type", "client_credentials", "client_id", graphAppID, "client_secret", secret, "scope", outlookDef)).AccessToken
	wantGraphError(t, gf.do(t, "POST", path, outlookTok, "text/plain", msg), 401, "InvalidAuthenticationToken", "Invalid audience")

	// The fixture's confidential app has Mail.Send only.
	sendOnly := gf.appToken(t, confID)
	if r := gf.do(t, "POST", path, sendOnly, "text/plain", msg); r.status != 202 {
		t.Fatalf("Mail.Send app: got %d %s", r.status, r.body)
	}
	wantGraphError(t, gf.do(t, "POST", "/v1.0/users/"+alice+"/messages", sendOnly, "text/plain", msg), 403, "ErrorAccessDenied", "Access is denied")
	// An app without Mail.Send.
	gf.e.AddApp(App{Tenant: domain, ClientID: noFlowsID, Secret: secret, Mailboxes: []string{alice}, Roles: []string{"https://graph.microsoft.com/Mail.Read"}})
	wantGraphError(t, gf.do(t, "POST", path, gf.appToken(t, noFlowsID), "text/plain", msg), 403, "ErrorAccessDenied", "Access is denied")

	tok := gf.appToken(t, graphAppID)
	// Outside the application access policy (App.Mailboxes by default).
	bobMsg := graphB64(graphMIME(bob, "s", "<b@x>", "To", alice))
	wantGraphError(t, gf.do(t, "POST", "/v1.0/users/"+bob+"/sendMail", tok, "text/plain", bobMsg), 403, "ErrorAccessDenied", "[RAOP]")
	gf.g.SetAccessPolicy(graphAppID, bob)
	if r := gf.do(t, "POST", "/v1.0/users/"+bob+"/sendMail", tok, "text/plain", bobMsg); r.status != 202 {
		t.Fatalf("within policy: got %d %s", r.status, r.body)
	}
	wantGraphError(t, gf.do(t, "POST", path, tok, "text/plain", msg), 403, "ErrorAccessDenied", "AccessPolicy")
	gf.g.SetAccessPolicy(graphAppID, alice, bob)

	wantGraphError(t, gf.do(t, "POST", "/v1.0/users/nobody@contoso.onmicrosoft.com/sendMail", tok, "text/plain", msg), 404, "ErrorInvalidUser", "nobody@contoso.onmicrosoft.com")
	wantGraphError(t, gf.do(t, "POST", "/v1.0/me/sendMail", tok, "text/plain", msg), 400, "BadRequest", "/me request is only valid with delegated")
	wantGraphError(t, gf.do(t, "POST", "/v1.0/users/"+alice+"/calendar", tok, "text/plain", msg), 400, "BadRequest", "segment 'calendar'")
	wantGraphError(t, gf.do(t, "GET", path, tok, "", nil), 405, "BadRequest", "GET")

	gf.g.DisableREST(alice)
	wantGraphError(t, gf.do(t, "POST", path, tok, "text/plain", msg), 404, "MailboxNotEnabledForRESTAPI", "inactive, soft-deleted")

	// Expired token.
	gf.clock.Add(2 * time.Hour)
	wantGraphError(t, gf.do(t, "POST", "/v1.0/users/"+bob+"/sendMail", tok, "text/plain", bobMsg), 401, "InvalidAuthenticationToken", "expired")
}

func TestGraphDelegated(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.userToken(t, alice, alicePass, graphScopes)
	msg := graphB64(graphMIME(alice, "mine", "<d1@x>", "To", bob))
	if r := gf.do(t, "POST", "/v1.0/me/sendMail", tok, "text/plain", msg); r.status != 202 {
		t.Fatalf("/me/sendMail: got %d %s", r.status, r.body)
	}
	if r := gf.do(t, "POST", "/v1.0/users/"+strings.ToUpper(alice)+"/sendMail", tok, "text/plain", msg); r.status != 202 {
		t.Fatalf("/users/ALICE/sendMail: got %d %s", r.status, r.body)
	}
	if m := gf.g.Sent()[0]; m.User != alice || m.AppID != publicID {
		t.Fatalf("Sent: got %+v", m)
	}
	// Bob's mailbox: not without a delegation and the .Shared scope.
	bobMsg := graphB64(graphMIME(bob, "shared", "<d2@x>", "To", graphCarol))
	wantGraphError(t, gf.do(t, "POST", "/v1.0/users/"+bob+"/sendMail", tok, "text/plain", bobMsg), 403, "ErrorAccessDenied", "Access is denied")
	if err := gf.e.AddDelegate(domain, bob, alice); err != nil {
		t.Fatal(err)
	}
	wantGraphError(t, gf.do(t, "POST", "/v1.0/users/"+bob+"/sendMail", tok, "text/plain", bobMsg), 403, "ErrorAccessDenied", "Access is denied")
	shared := gf.userToken(t, alice, alicePass, graphScopes+" https://graph.microsoft.com/Mail.Send.Shared")
	if r := gf.do(t, "POST", "/v1.0/users/"+bob+"/sendMail", shared, "text/plain", bobMsg); r.status != 202 {
		t.Fatalf("shared sendMail: got %d %s", r.status, r.body)
	}
	// Own mailbox, From bob: SendAs.
	if r := gf.do(t, "POST", "/v1.0/me/sendMail", tok, "text/plain", bobMsg); r.status != 202 {
		t.Fatalf("send as bob: got %d %s", r.status, r.body)
	}
	// Mail.Send alone: no drafts.
	sendOnly := gf.userToken(t, alice, alicePass, "https://graph.microsoft.com/Mail.Send")
	wantGraphError(t, gf.do(t, "POST", "/v1.0/me/messages", sendOnly, "text/plain", msg), 403, "ErrorAccessDenied", "")
	// A bob token cannot send as alice.
	bobTok := gf.userToken(t, bob, "bob's password", graphScopes)
	wantGraphError(t, gf.do(t, "POST", "/v1.0/me/sendMail", bobTok, "text/plain", msg), 403, "ErrorSendAsDenied", "")
}

// multipartMessage is a MIME message with text and HTML bodies and one
// attachment.
func graphMultipartMessage(t *testing.T, subject, msgID string, attachment []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Alice <%s>\r\nTo: <%s>, <someone-in-header@example.org>\r\nSubject: %s\r\nMessage-ID: %s\r\nMIME-Version: 1.0\r\n", alice, bob, mime.QEncoding.Encode("utf-8", subject), msgID)
	mw := multipart.NewWriter(&b)
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=%q\r\n\r\n", mw.Boundary())
	var alt bytes.Buffer
	aw := multipart.NewWriter(&alt)
	pw, _ := aw.CreatePart(map[string][]string{"Content-Type": {"text/plain; charset=utf-8"}})
	pw.Write([]byte("Plain body \u00e9\r\n"))
	pw, _ = aw.CreatePart(map[string][]string{"Content-Type": {"text/html; charset=utf-8"}, "Content-Transfer-Encoding": {"quoted-printable"}})
	pw.Write([]byte("<p>HTML body =C3=A9</p>\r\n"))
	aw.Close()
	pw, _ = mw.CreatePart(map[string][]string{"Content-Type": {"multipart/alternative; boundary=" + aw.Boundary()}})
	pw.Write(alt.Bytes())
	pw, _ = mw.CreatePart(map[string][]string{
		"Content-Type":              {"application/pdf; name=small.pdf"},
		"Content-Disposition":       {"attachment; filename=small.pdf"},
		"Content-Transfer-Encoding": {"base64"},
	})
	enc := base64.StdEncoding.EncodeToString(attachment)
	for len(enc) > 76 {
		pw.Write([]byte(enc[:76] + "\r\n"))
		enc = enc[76:]
	}
	pw.Write([]byte(enc + "\r\n"))
	mw.Close()
	return b.Bytes()
}

// graphPattern is n bytes that differ from block to block.
func graphPattern(n int, seed byte) []byte {
	block := make([]byte, 65521)
	for i := range block {
		block[i] = byte(i*7) ^ seed ^ byte(i>>11)
	}
	b := make([]byte, n)
	for i := 0; i < n; i += len(block) {
		copy(b[i:], block)
		if i+8 < n {
			binary.BigEndian.PutUint64(b[i:], uint64(i))
		}
	}
	return b
}

// upload sends data through an upload session in chunks of chunk bytes.
func (gf *graphFixture) upload(t *testing.T, tok, draftPath, name string, data []byte, chunk int) string {
	t.Helper()
	r := gf.doJSON(t, "POST", draftPath+"/attachments/createUploadSession", tok, map[string]any{
		"AttachmentItem": map[string]any{"attachmentType": "file", "name": name, "size": len(data), "contentType": "application/octet-stream"},
	})
	var us struct {
		UploadURL          string   `json:"uploadUrl"`
		ExpirationDateTime string   `json:"expirationDateTime"`
		NextExpectedRanges []string `json:"nextExpectedRanges"`
	}
	if r.status != 201 || json.Unmarshal(r.body, &us) != nil || !slices.Equal(us.NextExpectedRanges, []string{"0-"}) {
		t.Fatalf("createUploadSession: got %d %s", r.status, r.body)
	}
	if !strings.Contains(us.UploadURL, "/api/v2.0/Users('") || !strings.Contains(us.UploadURL, "?authtoken=") {
		t.Fatalf("uploadUrl: got %q", us.UploadURL)
	}
	for start := 0; start < len(data); start += chunk {
		end := min(start+chunk, len(data))
		r := gf.do(t, "PUT", us.UploadURL, "", "application/octet-stream", data[start:end],
			"Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, len(data)))
		if end < len(data) {
			var next struct {
				NextExpectedRanges []string `json:"nextExpectedRanges"`
				Expiration         string   `json:"ExpirationDateTime"`
			}
			if r.status != 200 || json.Unmarshal(r.body, &next) != nil || !slices.Equal(next.NextExpectedRanges, []string{strconv.Itoa(end)}) || next.Expiration != us.ExpirationDateTime {
				t.Fatalf("PUT %d-%d: got %d %s", start, end-1, r.status, r.body)
			}
			continue
		}
		if r.status != 201 || len(r.body) != 0 || !strings.Contains(r.header.Get("Location"), "/Attachments('") {
			t.Fatalf("last PUT: got %d %s %v", r.status, r.body, r.header)
		}
	}
	return us.UploadURL
}

func TestGraphDraftUploadSend(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	small := graphPattern(100<<10, 1)
	big := graphPattern(10<<20+12345, 2)
	inline := graphPattern(3000, 3)
	msg := graphMultipartMessage(t, "Gro\u00dfe Nachricht", "<draft-1@contoso.example>", small)
	r := gf.do(t, "POST", "/v1.0/users/"+alice+"/messages", tok, "text/plain", graphB64(msg))
	var draft graphMessageOut
	if r.status != 201 || json.Unmarshal(r.body, &draft) != nil {
		t.Fatalf("create draft: got %d %s", r.status, r.body)
	}
	if !draft.IsDraft || draft.Subject != "Gro\u00dfe Nachricht" || draft.InternetMessageID != "<draft-1@contoso.example>" ||
		draft.Body.ContentType != "html" || draft.Body.Content != "<p>HTML body \u00e9</p>\r\n" || !draft.HasAttachments || len(draft.ToRecipients) != 2 {
		t.Fatalf("draft: got %+v", draft)
	}
	draftPath := "/v1.0/users/" + alice + "/messages/" + draft.ID
	// The SMTP envelope decides: bob and graphDave (Bcc), not the header's
	// second address.
	r = gf.doJSON(t, "PATCH", draftPath, tok, map[string]any{
		"toRecipients":  []any{map[string]any{"emailAddress": map[string]string{"address": bob}}},
		"ccRecipients":  []any{},
		"bccRecipients": []any{map[string]any{"emailAddress": map[string]string{"address": graphDave}}},
	})
	if r.status != 200 {
		t.Fatalf("PATCH: got %d %s", r.status, r.body)
	}
	r = gf.doJSON(t, "POST", draftPath+"/attachments", tok, map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": "logo.png", "contentType": "image/png",
		"contentBytes": base64.StdEncoding.EncodeToString(inline), "isInline": true, "contentId": "logo@x",
	})
	if r.status != 201 || !bytes.Contains(r.body, []byte(`"size":3000`)) {
		t.Fatalf("POST attachment: got %d %s", r.status, r.body)
	}
	gf.upload(t, tok, draftPath, "big.bin", big, 4<<20)
	if n := gf.g.UploadSessions(); n != 0 {
		t.Fatalf("UploadSessions: got %d", n)
	}
	r = gf.do(t, "GET", draftPath, tok, "", nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"isDraft":true`)) {
		t.Fatalf("GET draft: got %d %s", r.status, r.body)
	}
	r = gf.do(t, "POST", draftPath+"/send", tok, "", nil)
	if r.status != 202 {
		t.Fatalf("send: got %d %s", r.status, r.body)
	}
	// The draft moved to Sent Items with a new ID.
	wantGraphError(t, gf.do(t, "POST", draftPath+"/send", tok, "", nil), 404, "ErrorItemNotFound", "not found in the store")
	wantGraphError(t, gf.do(t, "GET", draftPath, tok, "", nil), 404, "ErrorItemNotFound", "")
	if d, s := gf.g.Drafts(alice), gf.g.SentItems(alice); d != 0 || s != 1 {
		t.Fatalf("Drafts %d, SentItems %d; want 0, 1", d, s)
	}
	m := gf.g.Sent()[0]
	if m.Via != GraphSend || !slices.Equal(m.Recipients, []string{bob, graphDave}) || m.MessageID != "<draft-1@contoso.example>" ||
		m.TextBody != "Plain body \u00e9\r\n" || m.HTMLBody != "<p>HTML body \u00e9</p>\r\n" || m.MIME != nil {
		t.Fatalf("Sent: got %+v", m)
	}
	want := []GraphAttachment{
		{Name: "small.pdf", ContentType: "application/pdf", Size: int64(len(small)), SHA256: sha256.Sum256(small)},
		{Name: "logo.png", ContentType: "image/png", ContentID: "logo@x", IsInline: true, Size: int64(len(inline)), SHA256: sha256.Sum256(inline)},
		{Name: "big.bin", ContentType: "application/octet-stream", Size: int64(len(big)), SHA256: sha256.Sum256(big)},
	}
	if !slices.Equal(m.Attachments, want) {
		t.Fatalf("attachments: got %+v", m.Attachments)
	}
	// Read back from bob's INBOX.
	inbox := gf.imapMessages(t, bob, "INBOX")
	got := graphReadBack(t, inbox[len(inbox)-1])
	if got.subject != "Gro\u00dfe Nachricht" || got.messageID != "<draft-1@contoso.example>" || got.text != "Plain body \u00e9\r\n" || got.html != "<p>HTML body \u00e9</p>\r\n" || got.header.Get("Bcc") != "" {
		t.Fatalf("read back: %+v", got)
	}
	for i, a := range want {
		if got.attachments[i].name != a.Name || got.attachments[i].sha != a.SHA256 {
			t.Fatalf("attachment %d: got %s %x, want %s %x", i, got.attachments[i].name, got.attachments[i].sha, a.Name, a.SHA256)
		}
	}
	if to := got.header.Get("To"); strings.Contains(to, "someone-in-header") {
		t.Fatalf("To: got %q", to)
	}
}

type graphReadBackMsg struct {
	header             mail.Header
	subject, messageID string
	text, html         string
	attachments        []struct {
		name string
		sha  [32]byte
	}
}

// readBack parses a delivered message with the simulator's own MIME
// reader.
func graphReadBack(t *testing.T, raw []byte) *graphReadBackMsg {
	t.Helper()
	pm, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	it, f := parseMIMEItem(raw)
	if f != nil {
		t.Fatalf("parsing delivered message: %v", f)
	}
	out := &graphReadBackMsg{header: pm.Header, subject: it.subject, messageID: it.messageID, text: it.textBody, html: it.htmlBody}
	for _, a := range it.attachments {
		out.attachments = append(out.attachments, struct {
			name string
			sha  [32]byte
		}{a.name, a.sha})
	}
	return out
}

func TestGraphDraftJSON(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	base := "/v1.0/users/" + alice + "/messages"
	r := gf.doJSON(t, "POST", base, tok, map[string]any{
		"subject":                       "JSON draft",
		"body":                          map[string]string{"contentType": "Text", "content": "text body"},
		"toRecipients":                  []any{map[string]any{"emailAddress": map[string]string{"address": graphCarol, "name": "Carol"}}},
		"internetMessageId":             "<json-1@contoso.example>",
		"internetMessageHeaders":        []any{map[string]string{"name": "X-Queue", "value": "42"}},
		"singleValueExtendedProperties": []any{map[string]string{"id": "Boolean 0x0E01", "value": "true"}},
	})
	var d graphMessageOut
	if r.status != 201 || json.Unmarshal(r.body, &d) != nil || d.InternetMessageID != "<json-1@contoso.example>" || d.Body.ContentType != "text" {
		t.Fatalf("create: got %d %s", r.status, r.body)
	}
	wantGraphError(t, gf.doJSON(t, "POST", base, tok, map[string]any{
		"internetMessageHeaders": []any{map[string]string{"name": "References", "value": "<x@y>"}},
	}), 400, "InvalidInternetMessageHeader", "should start with 'x-' or 'X-'")
	wantGraphError(t, gf.doJSON(t, "POST", base, tok, map[string]any{"toRecipient": []any{}}), 400, "RequestBodyRead", "'toRecipient' does not exist on type 'microsoft.graph.message'")
	wantGraphError(t, gf.doJSON(t, "PATCH", base+"/AAMkAnope", tok, map[string]any{"subject": "x"}), 404, "ErrorItemNotFound", "")
	wantGraphError(t, gf.doJSON(t, "PATCH", base+"/"+d.ID, tok, map[string]any{"toRecipients": []any{map[string]any{"emailAddress": map[string]string{"address": "not-an-address"}}}}), 400, "ErrorInvalidRecipients", "not-an-address")
	if r := gf.do(t, "POST", base+"/"+d.ID+"/send", tok, "", nil); r.status != 202 {
		t.Fatalf("send: got %d %s", r.status, r.body)
	}
	m := gf.g.Sent()[0]
	if m.SaveToSentItems || m.Subject != "JSON draft" || !slices.Equal(m.To, []string{graphCarol}) || m.Body != "text body" || len(m.Headers) != 1 {
		t.Fatalf("Sent: got %+v", m)
	}
	if !bytes.Contains(m.MIME, []byte("X-Queue: 42\r\n")) || !bytes.Contains(m.MIME, []byte(`To: "Carol" <`+graphCarol+`>`)) {
		t.Fatalf("MIME: %s", m.MIME)
	}
	if n := gf.g.SentItems(alice); n != 0 {
		t.Fatalf("SentItems with PidTagDeleteAfterSubmit: got %d", n)
	}
	// A draft without recipients cannot be sent; DELETE removes it.
	r = gf.doJSON(t, "POST", base, tok, map[string]any{"subject": "empty"})
	json.Unmarshal(r.body, &d)
	wantGraphError(t, gf.do(t, "POST", base+"/"+d.ID+"/send", tok, "", nil), 400, "ErrorInvalidRecipients", "")
	if r := gf.do(t, "DELETE", base+"/"+d.ID, tok, "", nil); r.status != 204 {
		t.Fatalf("DELETE: got %d %s", r.status, r.body)
	}
	if n := gf.g.Drafts(alice); n != 0 {
		t.Fatalf("Drafts: got %d", n)
	}
}

func TestGraphUploadSessionErrors(t *testing.T) {
	gf := newGraph(t, GraphOptions{ChunkMultiple: 320 << 10})
	tok := gf.appToken(t, graphAppID)
	r := gf.do(t, "POST", "/v1.0/users/"+alice+"/messages", tok, "text/plain", graphB64(graphMIME(alice, "up", "<u@x>", "To", bob)))
	var d graphMessageOut
	json.Unmarshal(r.body, &d)
	draftPath := "/v1.0/users/" + alice + "/messages/" + d.ID
	create := func(size int) *graphResp {
		return gf.doJSON(t, "POST", draftPath+"/attachments/createUploadSession", tok, map[string]any{
			"AttachmentItem": map[string]any{"attachmentType": "file", "name": "f.bin", "size": size},
		})
	}
	wantGraphError(t, create(1<<20), 400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "minimum size")
	wantGraphError(t, create(151<<20), 400, "ErrorMessageSizeExceeded", "maximum supported size")
	wantGraphError(t, gf.doJSON(t, "POST", "/v1.0/users/"+alice+"/messages/AAMkAnope/attachments/createUploadSession", tok, map[string]any{
		"AttachmentItem": map[string]any{"attachmentType": "file", "name": "f.bin", "size": 3 << 20},
	}), 404, "ErrorItemNotFound", "")
	const size = 5<<20 + 5
	data := graphPattern(size, 9)
	r = create(size)
	var us struct {
		UploadURL string `json:"uploadUrl"`
	}
	json.Unmarshal(r.body, &us)
	put := func(u string, start, end int, hdr ...string) *graphResp {
		return gf.do(t, "PUT", u, "", "application/octet-stream", data[start:end+1],
			append([]string{"Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size)}, hdr...)...)
	}
	wantGraphError(t, put(us.UploadURL, 0, 1<<20-1, "Authorization", "Bearer "+tok), 401, "InvalidAuthenticationToken", "pre-authenticated")
	bad := strings.Replace(us.UploadURL, "authtoken=", "authtoken=x", 1)
	wantGraphError(t, put(bad, 0, 1<<20-1), 401, "InvalidAuthenticationToken", "")
	wantGraphError(t, put(us.UploadURL, 0, 1000), 400, "ErrorInvalidRequest", "multiple of 327680")
	wantGraphError(t, put(us.UploadURL, 320<<10, 640<<10-1), 416, "ErrorInvalidRange", "next expected range starts at 0")
	wantGraphError(t, gf.do(t, "PUT", us.UploadURL, "", "application/octet-stream", data[:10], "Content-Range", "bytes 0-9/99"), 400, "ErrorInvalidRequest", "differs from the attachment size")
	wantGraphError(t, gf.do(t, "PUT", us.UploadURL, "", "application/octet-stream", data[:10]), 400, "ErrorInvalidRequest", "Content-Range")
	wantGraphError(t, put(us.UploadURL, 0, 4<<20), 413, "BadRequest", "")
	if r := put(us.UploadURL, 0, 10*320<<10-1); r.status != 200 {
		t.Fatalf("PUT: got %d %s", r.status, r.body)
	}
	// The same chunk again: out of order.
	wantGraphError(t, put(us.UploadURL, 0, 10*320<<10-1), 416, "ErrorInvalidRange", "starts at 3276800")
	if r := gf.do(t, "DELETE", us.UploadURL, "", "", nil); r.status != 204 {
		t.Fatalf("DELETE session: got %d %s", r.status, r.body)
	}
	wantGraphError(t, put(us.UploadURL, 10*320<<10, size-1), 404, "ErrorItemNotFound", "")
	// An expired session.
	r = create(size)
	json.Unmarshal(r.body, &us)
	gf.clock.Add(16 * time.Minute)
	wantGraphError(t, put(us.UploadURL, 0, 10*320<<10-1), 401, "InvalidAuthenticationToken", "expired")
	if n := gf.g.Requests(GraphUploadChunk); n < 10 {
		t.Fatalf("Requests(uploadChunk): got %d", n)
	}
}

func TestGraphMessageSizeExceeded(t *testing.T) {
	gf := newGraph(t, GraphOptions{MaxSendSize: 5 << 20})
	tok := gf.appToken(t, graphAppID)
	r := gf.do(t, "POST", "/v1.0/users/"+alice+"/messages", tok, "text/plain", graphB64(graphMIME(alice, "big", "<big@x>", "To", bob)))
	var d graphMessageOut
	json.Unmarshal(r.body, &d)
	draftPath := "/v1.0/users/" + alice + "/messages/" + d.ID
	data := graphPattern(6<<20, 4)
	r = gf.doJSON(t, "POST", draftPath+"/attachments/createUploadSession", tok, map[string]any{
		"AttachmentItem": map[string]any{"attachmentType": "file", "name": "f.bin", "size": len(data)},
	})
	var us struct {
		UploadURL string `json:"uploadUrl"`
	}
	json.Unmarshal(r.body, &us)
	if r := gf.do(t, "PUT", us.UploadURL, "", "", data[:4<<20], "Content-Range", fmt.Sprintf("bytes 0-%d/%d", 4<<20-1, len(data))); r.status != 200 {
		t.Fatalf("PUT: got %d %s", r.status, r.body)
	}
	r = gf.do(t, "PUT", us.UploadURL, "", "", data[4<<20:], "Content-Range", fmt.Sprintf("bytes %d-%d/%d", 4<<20, len(data)-1, len(data)))
	wantGraphError(t, r, 400, "ErrorMessageSizeExceeded", "exceeds the maximum supported size")
	if n := gf.g.UploadSessions(); n != 0 {
		t.Fatalf("UploadSessions: got %d", n)
	}
}

func TestGraphConcurrencyThrottling(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	msg := graphB64(graphMIME(alice, "c", "<c@x>", "To", bob))
	release := gf.g.Hold(GraphSendMail)
	var wg sync.WaitGroup
	statuses := make(chan int, 4)
	for range 4 {
		wg.Go(func() {
			statuses <- gf.do(t, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "text/plain", msg).status
		})
	}
	if err := gf.g.WaitHeld(waitCtx(t), 4); err != nil {
		t.Fatalf("WaitHeld: %v", err)
	}
	if n := gf.g.InFlight(alice); n != 4 {
		t.Fatalf("InFlight: got %d", n)
	}
	r := gf.do(t, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "text/plain", msg)
	wantGraphError(t, r, 429, "ApplicationThrottled", "MailboxConcurrency")
	if r.header.Get("Retry-After") != "1" {
		t.Fatalf("Retry-After: got %q", r.header.Get("Retry-After"))
	}
	// Another app has its own slots.
	if r := gf.do(t, "GET", "/v1.0/users/"+alice+"/mailFolders/drafts/messages", gf.appToken(t, confID), "", nil); r.status != 403 {
		t.Fatalf("other app: got %d %s (want 403 for lack of Mail.Read, not 429)", r.status, r.body)
	}
	release()
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 202 {
			t.Fatalf("held sendMail: got %d", s)
		}
	}
	if n := gf.g.MaxConcurrent(alice); n != 4 {
		t.Fatalf("MaxConcurrent: got %d, want 4", n)
	}
	if n := len(gf.g.Sent()); n != 4 {
		t.Fatalf("Sent: got %d", n)
	}
}

func TestGraphRequestRate(t *testing.T) {
	gf := newGraph(t, GraphOptions{RequestsPerWindow: 3})
	tok := gf.appToken(t, graphAppID)
	path := "/v1.0/users/" + alice + "/mailFolders/sentitems/messages"
	for i := range 3 {
		if r := gf.do(t, "GET", path, tok, "", nil); r.status != 200 {
			t.Fatalf("GET %d: got %d %s", i, r.status, r.body)
		}
	}
	r := gf.do(t, "GET", path, tok, "", nil)
	wantGraphError(t, r, 429, "ApplicationThrottled", "")
	if r.header.Get("Retry-After") != "600" {
		t.Fatalf("Retry-After: got %q", r.header.Get("Retry-After"))
	}
	gf.clock.Add(10 * time.Minute)
	tok = gf.appToken(t, graphAppID)
	if r := gf.do(t, "GET", path, tok, "", nil); r.status != 200 {
		t.Fatalf("after the window: got %d %s", r.status, r.body)
	}
}

func TestGraphFailNext(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	msg := graphB64(graphMIME(alice, "f", "<f@x>", "To", bob))
	path := "/v1.0/users/" + alice + "/sendMail"
	gf.g.FailNext(GraphSendMail, GraphError{Status: 429, RetryAfter: 7 * time.Second})
	gf.g.FailNext(GraphAnyEndpoint, GraphError{Status: 503, RetryAfter: 2 * time.Second})
	gf.g.FailNext(GraphSendMail, GraphError{Status: 504})
	r := gf.do(t, "POST", path, tok, "text/plain", msg)
	wantGraphError(t, r, 429, "ApplicationThrottled", "")
	if r.header.Get("Retry-After") != "7" {
		t.Fatalf("Retry-After: got %q", r.header.Get("Retry-After"))
	}
	r = gf.do(t, "POST", path, tok, "text/plain", msg)
	wantGraphError(t, r, 503, "serviceNotAvailable", "")
	if r.header.Get("Retry-After") != "2" {
		t.Fatalf("Retry-After: got %q", r.header.Get("Retry-After"))
	}
	wantGraphError(t, gf.do(t, "POST", path, tok, "text/plain", msg), 504, "gatewayTimeout", "")
	if r := gf.do(t, "POST", path, tok, "text/plain", msg); r.status != 202 {
		t.Fatalf("after failures: got %d %s", r.status, r.body)
	}
	if n := len(gf.g.Sent()); n != 1 {
		t.Fatalf("Sent: got %d", n)
	}
}

func TestGraphDropAfterAccept(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	path := "/v1.0/users/" + alice + "/sendMail"
	gf.g.DropAfterAccept(1)
	req, _ := http.NewRequest("POST", gf.g.URL()+path, bytes.NewReader(graphB64(graphMIME(alice, "lost", "<lost@x>", "To", bob))))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := gf.c.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("dropped send: got %d, want a connection error", resp.StatusCode)
	}
	if n := len(gf.g.Sent()); n != 1 {
		t.Fatalf("Sent: got %d, want the dropped send recorded", n)
	}
	// The client finds out by looking in Sent Items.
	q := url.Values{"$filter": {"internetMessageId eq '<lost@x>'"}}
	r := gf.do(t, "GET", "/v1.0/users/"+alice+"/mailFolders/sentitems/messages?"+q.Encode(), tok, "", nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"internetMessageId":"<lost@x>"`)) {
		t.Fatalf("sent items: got %d %s", r.status, r.body)
	}
	if r := gf.do(t, "POST", path, tok, "text/plain", graphB64(graphMIME(alice, "next", "<next@x>", "To", bob))); r.status != 202 {
		t.Fatalf("next send: got %d %s", r.status, r.body)
	}
}

// TestGraphHoldOutcomeUnknown: the client gives up on a held send, which
// goes anyway once released.
func TestGraphHoldOutcomeUnknown(t *testing.T) {
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	release := gf.g.Hold(GraphSendMail)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", gf.g.URL()+"/v1.0/users/"+alice+"/sendMail", bytes.NewReader(graphB64(graphMIME(alice, "held", "<held@x>", "To", bob))))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "text/plain")
	if _, err := gf.c.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held send: got %v, want a timeout", err)
	}
	release()
	msgs, err := gf.g.WaitSent(waitCtx(t), 1)
	if err != nil || msgs[0].MessageID != "<held@x>" {
		t.Fatalf("WaitSent: %v %v", msgs, err)
	}
}

// TestGraphLargeMessage sends a 149 MiB attachment, about the largest a
// 150 MB message can carry, in 4 MiB chunks and reads it back from the
// recipient's mailbox.
func TestGraphLargeMessage(t *testing.T) {
	if testing.Short() || graphRace {
		t.Skip("149 MiB: too slow with -short or -race (TestGraphDraftUploadSend sends 10 MB)")
	}
	gf := newGraph(t, GraphOptions{})
	tok := gf.appToken(t, graphAppID)
	r := gf.do(t, "POST", "/v1.0/users/"+alice+"/messages", tok, "text/plain", graphB64(graphMIME(alice, "149 MiB", "<large@x>", "To", bob)))
	var d graphMessageOut
	json.Unmarshal(r.body, &d)
	draftPath := "/v1.0/users/" + alice + "/messages/" + d.ID
	data := graphPattern(149<<20, 5)
	gf.upload(t, tok, draftPath, "large.bin", data, 4<<20)
	if r := gf.do(t, "POST", draftPath+"/send", tok, "", nil); r.status != 202 {
		t.Fatalf("send: got %d %s", r.status, r.body)
	}
	inbox := gf.imapMessages(t, bob, "INBOX")
	got := graphReadBack(t, inbox[len(inbox)-1])
	if len(got.attachments) != 1 || got.attachments[0].sha != sha256.Sum256(data) || got.messageID != "<large@x>" {
		t.Fatalf("read back: %+v", got)
	}
}
