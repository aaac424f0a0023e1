package graph

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/mail"
	gosmtp "github.com/emersion/go-smtp"
)

// messageWriter receives one message into its spool; Close sends it.
type messageWriter struct {
	u     *upstream
	spool *spool
	from  string
	rcpts []string

	mu        sync.Mutex
	discarded bool
	attrs     []any
}

func (m *messageWriter) Write(p []byte) (int, error) { return m.spool.Write(p) }

func (m *messageWriter) discard() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.discarded = true
	m.spool.close()
}

// LogAttrs are what the session's line about the message adds: the
// upstream, how it was sent, Graph's request-id.
func (m *messageWriter) LogAttrs() []any {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.attrs
}

var (
	errLost    = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "Connection to Microsoft Graph lost, message not accepted; try again later"}
	errTooLong = &gosmtp.SMTPError{Code: 552, EnhancedCode: gosmtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds fixed maximum message size"}
)

// Close sends the message and returns the text of the client's 250: only
// once Graph accepted it (202). Every failure is an SMTP reply.
func (m *messageWriter) Close() (string, error) {
	u := m.u
	defer func() {
		u.mu.Lock()
		if u.msg == m {
			u.msg = nil
		}
		u.mu.Unlock()
		m.discard()
	}()
	if err := m.spool.finish(); err != nil {
		if errors.Is(err, errTooBig) {
			return "", errTooLong
		}
		return "", errLost
	}
	ctx, cancel := context.WithTimeout(u.ctx, u.d.opts.MessageTimeout)
	defer cancel()
	t := &transfer{
		d: u.d, log: u.d.log, account: u.account, mb: u.d.mailbox(u.account),
		m: m, start: time.Now(), clientRequestID: newGUID(),
	}
	t.retryDeadline = t.start.Add(u.d.opts.RetryBudget)
	reply, err := t.run(ctx)
	attrs := []any{"via", "graph", "graph_mode", t.mode, "graph_request_id", t.lastRequestID,
		"graph_requests", t.requests, "message_id", t.messageID}
	if t.retries > 0 {
		attrs = append(attrs, "graph_retries", t.retries)
	}
	if err != nil {
		se, advice := replyFor(err, u.account, m.from)
		attrs = append(attrs, "graph_error", err.Error())
		if advice != "" {
			attrs = append(attrs, "advice", advice)
		}
		m.setAttrs(attrs)
		return "", se
	}
	m.setAttrs(attrs)
	return reply, nil
}

func (m *messageWriter) setAttrs(a []any) {
	m.mu.Lock()
	m.attrs = a
	m.mu.Unlock()
}

// transfer is the sending of one message.
type transfer struct {
	d       *Dialer
	log     *slog.Logger
	account string
	mb      *mailboxState
	m       *messageWriter
	start   time.Time

	token           string
	clientRequestID string
	retryDeadline   time.Time
	prefix          string // a Message-ID field added to a message without one
	messageID       string
	mode            string
	draftID         string

	requests, retries int
	lastRequestID     string
	reauthed          bool // the token was refused and replaced once
}

func (t *transfer) userURL() string {
	return strings.TrimRight(t.d.opts.URL(t.account), "/") + "/v1.0/users/" + url.PathEscape(t.account)
}

// source returns the message as sent: the added Message-ID, then the
// spool.
func (t *transfer) source() io.Reader {
	return io.MultiReader(strings.NewReader(t.prefix), t.m.spool.open())
}

func (t *transfer) size() int64 { return int64(len(t.prefix)) + t.m.spool.size }

func (t *transfer) run(ctx context.Context) (string, error) {
	tok, err := t.m.u.bearer(ctx)
	if err != nil {
		return "", err
	}
	t.token = tok
	sc, err := scanMessage(t.source())
	if err != nil {
		return "", &errContent{err}
	}
	t.messageID = sc.messageID
	if t.messageID == "" {
		t.messageID = "<" + newGUID() + "@" + t.d.opts.Hostname + ">"
		t.prefix = "Message-ID: " + t.messageID + "\r\n"
	}
	to, cc, bcc := recipients(sc, t.m.rcpts)
	if len(to)+len(cc)+len(bcc) == 0 {
		return "", errNoRecipients
	}
	if t.size() <= maxInlineMIME && t.d.opts.SaveToSentItems && sc.headerRcpt && sameRecipients(sc, t.m.rcpts) {
		t.mode = "sendMail"
		return t.sendMail(ctx)
	}
	t.mode = "draft"
	return t.sendDraft(ctx, sc, to, cc, bcc)
}

// sendMail sends the MIME message with one request.
func (t *transfer) sendMail(ctx context.Context) (string, error) {
	n := t.size()
	r := &request{
		op: "sendMail", method: http.MethodPost, url: t.userURL() + "/sendMail",
		ctype: "text/plain", isSend: true, accepted: []int{http.StatusAccepted},
		body: func() (io.ReadCloser, int64, error) {
			return base64Body(func(w io.Writer) error { _, err := io.Copy(w, t.source()); return err }), base64Len(n), nil
		},
	}
	resp, err := t.do(ctx, r, nil)
	if err != nil {
		return t.unknown(ctx, err)
	}
	return accepted(resp.requestID), nil
}

// plan decides what goes out in the draft's MIME form and what is
// attached separately: attachments from uploadThreshold on through upload
// sessions, and then, largest first, smaller ones with a request each
// until the MIME form fits a request.
func plan(sc *scan, total int64) (map[string]action, []*leaf, error) {
	actions := make(map[string]action)
	draft := total
	var rest []*leaf
	for _, l := range sc.leaves {
		if l.body {
			continue
		}
		if l.size >= uploadThreshold {
			l.action = upload
			actions[l.path] = upload
			draft -= l.raw
			continue
		}
		rest = append(rest, l)
	}
	slices.SortStableFunc(rest, func(a, b *leaf) int { return int(b.raw - a.raw) })
	for _, l := range rest {
		if draft <= maxInlineMIME {
			break
		}
		l.action = attach
		actions[l.path] = attach
		draft -= l.raw
	}
	var extra []*leaf
	for _, l := range sc.leaves {
		if l.action != keep {
			extra = append(extra, l)
		}
	}
	return actions, extra, nil
}

// sendDraft creates a draft from the message without its large
// attachments, sets its recipients from the envelope, attaches the rest
// and sends it. A draft left behind by a failure is deleted.
func (t *transfer) sendDraft(ctx context.Context, sc *scan, to, cc, bcc []recipient) (reply string, err error) {
	actions, extra, _ := plan(sc, t.size())
	var dry countWriter
	if err := writeDraft(&dry, t.source(), t.prefix, actions); err != nil {
		return "", &errContent{err}
	}
	if base64Len(int64(dry)) > maxRequestBytes-64<<10 {
		return "", &errBodyTooLarge{size: int64(dry)}
	}
	draftLen := int64(dry)
	var created struct {
		ID string `json:"id"`
	}
	_, err = t.do(ctx, &request{
		op: "create draft", method: http.MethodPost, url: t.userURL() + "/messages", ctype: "text/plain",
		accepted: []int{http.StatusCreated, http.StatusOK},
		body: func() (io.ReadCloser, int64, error) {
			return base64Body(func(w io.Writer) error { return writeDraft(w, t.source(), t.prefix, actions) }), base64Len(draftLen), nil
		},
	}, &created)
	if err != nil {
		return "", err
	}
	if created.ID == "" {
		return "", &errTransport{op: "create draft", err: errors.New("no message id in Microsoft Graph's answer")}
	}
	t.draftID = created.ID
	msgURL := t.userURL() + "/messages/" + url.PathEscape(created.ID)
	sent := false
	defer func() {
		if !sent {
			t.deleteDraft(msgURL)
		}
	}()

	patch := map[string]any{
		"toRecipients":  jsonRecipients(to),
		"ccRecipients":  jsonRecipients(cc),
		"bccRecipients": jsonRecipients(bcc),
	}
	if !t.d.opts.SaveToSentItems {
		// PidTagDeleteAfterSubmit: no copy in Sent Items.
		patch["singleValueExtendedProperties"] = []map[string]string{{"id": "Boolean 0x0E01", "value": "true"}}
	}
	patchJSON, err := json.Marshal(patch)
	if err != nil {
		return "", err
	}
	if _, err := t.do(ctx, &request{
		op: "set recipients", method: http.MethodPatch, url: msgURL, ctype: "application/json",
		body: bytesBody(patchJSON),
	}, nil); err != nil {
		return "", err
	}

	if len(extra) > 0 {
		byPath := make(map[string]*leaf, len(extra))
		for _, l := range extra {
			byPath[l.path] = l
		}
		buf := make([]byte, chunkBytes)
		err := visitLeaves(t.source(), actions, func(path string, body io.Reader) error {
			l := byPath[path]
			if l.action == upload {
				return t.upload(ctx, msgURL, l, body, buf)
			}
			return t.attach(ctx, msgURL, l, body)
		})
		if err != nil {
			return "", err
		}
	}

	resp, err := t.do(ctx, &request{
		op: "send", method: http.MethodPost, url: msgURL + "/send", isSend: true,
		accepted: []int{http.StatusAccepted},
	}, nil)
	if err != nil {
		reply, err := t.unknown(ctx, err)
		sent = err == nil || isUnknown(err)
		return reply, err
	}
	sent = true
	return accepted(resp.requestID), nil
}

// attach adds a small attachment with one request.
func (t *transfer) attach(ctx context.Context, msgURL string, l *leaf, body io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(body, uploadThreshold+1))
	if err != nil {
		return &errContent{err}
	}
	head, err := json.Marshal(map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment",
		"name":        attachmentName(l),
		"contentType": l.contentType,
		"isInline":    l.inline,
		"contentId":   l.contentID,
	})
	if err != nil {
		return err
	}
	// {"…":…, "contentBytes":"<base64>"}
	head = append(head[:len(head)-1], `,"contentBytes":"`...)
	tail := []byte(`"}`)
	n := int64(len(head)) + base64Len(int64(len(data))) + int64(len(tail))
	_, err = t.do(ctx, &request{
		op: "add attachment", method: http.MethodPost, url: msgURL + "/attachments", ctype: "application/json",
		accepted: []int{http.StatusCreated, http.StatusOK},
		body: func() (io.ReadCloser, int64, error) {
			return pipeBody(func(w io.Writer) error {
				if _, err := w.Write(head); err != nil {
					return err
				}
				enc := base64.NewEncoder(base64.StdEncoding, w)
				if _, err := enc.Write(data); err != nil {
					return err
				}
				if err := enc.Close(); err != nil {
					return err
				}
				_, err := w.Write(tail)
				return err
			}), n, nil
		},
	}, nil)
	return err
}

// upload attaches a large attachment through an upload session, in
// chunks of chunkBytes read into buf.
func (t *transfer) upload(ctx context.Context, msgURL string, l *leaf, body io.Reader, buf []byte) error {
	reqJSON, err := json.Marshal(map[string]any{"AttachmentItem": map[string]any{
		"attachmentType": "file",
		"name":           attachmentName(l),
		"size":           l.size,
		"contentType":    l.contentType,
		"isInline":       l.inline,
		"contentId":      l.contentID,
	}})
	if err != nil {
		return err
	}
	var sess struct {
		UploadURL string `json:"uploadUrl"`
	}
	if _, err := t.do(ctx, &request{
		op: "create upload session", method: http.MethodPost, url: msgURL + "/attachments/createUploadSession",
		ctype: "application/json", body: bytesBody(reqJSON), accepted: []int{http.StatusCreated, http.StatusOK},
	}, &sess); err != nil {
		return err
	}
	if sess.UploadURL == "" {
		return &errTransport{op: "create upload session", err: errors.New("no uploadUrl in Microsoft Graph's answer")}
	}
	var off int64
	for off < l.size {
		n, err := io.ReadFull(body, buf[:min(int64(len(buf)), l.size-off)])
		if err != nil {
			return &errContent{fmt.Errorf("attachment %s: %w", l.path, err)}
		}
		chunk := buf[:n]
		last := off+int64(n) == l.size
		accept := []int{http.StatusOK}
		if last {
			accept = []int{http.StatusCreated, http.StatusOK}
		}
		if _, err := t.do(ctx, &request{
			op: "upload attachment", method: http.MethodPut, url: sess.UploadURL, noAuth: true,
			ctype: "application/octet-stream", body: bytesBody(chunk), accepted: accept,
			header: map[string]string{"Content-Range": fmt.Sprintf("bytes %d-%d/%d", off, off+int64(n)-1, l.size)},
		}, nil); err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// deleteDraft removes a draft that will not be sent, best effort.
func (t *transfer) deleteDraft(msgURL string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	saved := t.retryDeadline
	t.retryDeadline = time.Now().Add(10 * time.Second)
	defer func() { t.retryDeadline = saved }()
	if _, err := t.do(ctx, &request{op: "delete draft", method: http.MethodDelete, url: msgURL}, nil); err != nil {
		t.d.log.Warn("could not delete the draft of a message that was not sent", "account", t.account,
			"message_id", t.messageID, "err", err.Error())
	}
}

// unknown resolves a send whose outcome is unknown: the message is looked
// up in Sent Items by its Message-ID (and a draft that is gone was sent);
// found, it was sent. Other errors pass through.
func (t *transfer) unknown(ctx context.Context, err error) (string, error) {
	if !isUnknown(err) {
		return "", err
	}
	t.d.log.Warn("connection to Microsoft Graph lost after sending; looking for the message in Sent Items",
		"account", t.account, "message_id", t.messageID, "err", err.Error())
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	t.retryDeadline = time.Now().Add(30 * time.Second)
	q := url.Values{
		"$filter": {"internetMessageId eq '" + strings.ReplaceAll(t.messageID, "'", "''") + "'"},
		"$select": {"id,internetMessageId"},
	}
	for _, delay := range t.d.opts.LookupDelays {
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return "", err
			}
		}
		var list struct {
			Value []struct {
				ID string `json:"id"`
			} `json:"value"`
		}
		resp, lerr := t.do(ctx, &request{
			op: "look up in Sent Items", method: http.MethodGet,
			url: t.userURL() + "/mailFolders/sentitems/messages?" + q.Encode(),
		}, &list)
		if lerr != nil {
			t.d.log.Warn("could not look the message up in Sent Items", "account", t.account, "message_id", t.messageID, "err", lerr.Error())
			return "", err
		}
		if len(list.Value) > 0 {
			return accepted(resp.requestID) + " (found in Sent Items)", nil
		}
		if t.draftID != "" {
			// A draft that is gone was sent (and not saved).
			_, gerr := t.do(ctx, &request{op: "look up the draft", method: http.MethodGet,
				url: t.userURL() + "/messages/" + url.PathEscape(t.draftID) + "?$select=id"}, nil)
			var ge *graphError
			if errors.As(gerr, &ge) && ge.Code == "ErrorItemNotFound" {
				return accepted(t.lastRequestID) + " (draft sent)", nil
			}
		}
	}
	return "", err
}

func isUnknown(err error) bool {
	var u *errUnknown
	return errors.As(err, &u)
}

func accepted(requestID string) string {
	if requestID == "" {
		return "2.0.0 OK sent through Microsoft Graph"
	}
	return "2.0.0 OK <" + requestID + "> sent through Microsoft Graph"
}

// recipient is a recipient of the draft.
type recipient struct{ name, address string }

func jsonRecipients(rs []recipient) []map[string]any {
	out := make([]map[string]any, 0, len(rs))
	for _, r := range rs {
		ea := map[string]string{"address": r.address}
		if r.name != "" {
			ea["name"] = r.name
		}
		out = append(out, map[string]any{"emailAddress": ea})
	}
	return out
}

// recipients sets the draft's recipients from the envelope, as SMTP
// decides who receives: To and Cc keep the header's addresses that are
// envelope recipients, Bcc takes every other envelope recipient; header
// addresses that are not envelope recipients are left out.
func recipients(sc *scan, rcpts []string) (to, cc, bcc []recipient) {
	env := make(map[string]bool, len(rcpts))
	for _, r := range rcpts {
		env[strings.ToLower(r)] = true
	}
	seen := make(map[string]bool)
	pick := func(list []*mail.Address) []recipient {
		var out []recipient
		for _, a := range list {
			k := strings.ToLower(a.Address)
			if env[k] && !seen[k] {
				seen[k] = true
				out = append(out, recipient{a.Name, a.Address})
			}
		}
		return out
	}
	to, cc = pick(sc.to), pick(sc.cc)
	for _, r := range rcpts {
		if k := strings.ToLower(r); !seen[k] {
			seen[k] = true
			bcc = append(bcc, recipient{address: r})
		}
	}
	return to, cc, bcc
}

// sameRecipients: the header's To, Cc and Bcc are the envelope's
// recipients, so that sendMail, which takes them from the header, sends
// to exactly those.
func sameRecipients(sc *scan, rcpts []string) bool {
	h := make(map[string]bool)
	for _, list := range [][]*mail.Address{sc.to, sc.cc, sc.bcc} {
		for _, a := range list {
			h[strings.ToLower(a.Address)] = true
		}
	}
	e := make(map[string]bool)
	for _, r := range rcpts {
		e[strings.ToLower(r)] = true
	}
	if len(h) != len(e) {
		return false
	}
	for k := range e {
		if !h[k] {
			return false
		}
	}
	return true
}

func attachmentName(l *leaf) string {
	if l.name != "" {
		return l.name
	}
	if l.contentType == "message/rfc822" {
		return "message.eml"
	}
	return "attachment"
}

// pipeBody streams what write produces as a request body. The HTTP
// client closes the body when it is done with it, which ends write.
func pipeBody(write func(io.Writer) error) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(write(pw)) }()
	return pr
}

// base64Body streams what write produces, base64-encoded.
func base64Body(write func(io.Writer) error) io.ReadCloser {
	return pipeBody(func(w io.Writer) error {
		enc := base64.NewEncoder(base64.StdEncoding, w)
		if err := write(enc); err != nil {
			return err
		}
		return enc.Close()
	})
}

func base64Len(n int64) int64 { return (n + 2) / 3 * 4 }

func bytesBody(b []byte) func() (io.ReadCloser, int64, error) {
	return func() (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
	}
}

func newGUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
