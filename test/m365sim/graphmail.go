package m365sim

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/mail"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

const (
	folderDrafts    = "drafts"
	folderSentItems = "sentitems"
	folderInbox     = "inbox"
)

// GraphHeader is an entry of internetMessageHeaders.
type GraphHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// GraphAttachment is an attachment of a sent message.
type GraphAttachment struct {
	Name        string
	ContentType string
	ContentID   string
	IsInline    bool
	Size        int64
	SHA256      [32]byte
}

// GraphMessage is a message the simulated Graph sent.
type GraphMessage struct {
	Mailbox string        // the mailbox of the request URL, lower case
	AppID   string        // client ID of the token's app
	User    string        // UPN of a delegated token; "" for app-only
	Via     GraphEndpoint // GraphSendMail or GraphSend
	From    string        // the From address
	To      []string
	Cc      []string
	Bcc     []string
	// Recipients are who got it: To, Cc and Bcc, lower case, without
	// duplicates. Graph takes them from the message, never from an SMTP
	// envelope.
	Recipients      []string
	Subject         string
	MessageID       string // internetMessageId, with angle brackets
	BodyType        string // "text" or "html", as Graph reports body
	Body            string
	TextBody        string
	HTMLBody        string
	Headers         []GraphHeader // internetMessageHeaders (X- headers)
	Attachments     []GraphAttachment
	SaveToSentItems bool
	SentAt          time.Time
	// The MIME message recipients got (without Bcc).
	Size   int64
	SHA256 [32]byte
	MIME   []byte // nil when Size > GraphOptions.KeepBytes
}

type graphMailbox struct {
	address string
	oid     string // for upload URLs: the user's object ID, or made up
	items   map[string]*graphItem
}

type graphAddress struct {
	Name    string
	Address string
}

func (a graphAddress) String() string {
	return (&mail.Address{Name: a.Name, Address: a.Address}).String()
}

type graphItem struct {
	id                string
	folder            string
	created, modified time.Time
	sent              time.Time
	subject           string
	textBody          string
	htmlBody          string
	from              *graphAddress
	to, cc, bcc       []graphAddress
	replyTo           []graphAddress
	messageID         string
	headers           []GraphHeader
	attachments       []*graphAttachment
	deleteAfterSubmit bool
	conversationID    string
}

type graphAttachment struct {
	id          string
	name        string
	contentType string
	contentID   string
	inline      bool
	data        []byte // nil in Sent Items copies
	size        int64
	sha         [32]byte
	modified    time.Time
}

// size is roughly what the message weighs against MaxSendSize.
func (it *graphItem) size() int64 {
	n := int64(len(it.subject) + len(it.textBody) + len(it.htmlBody) + 1024)
	for _, a := range it.attachments {
		n += a.size
	}
	return n
}

func newGraphID() string {
	b := make([]byte, 46)
	rand.Read(b)
	return "AAMkA" + base64.URLEncoding.EncodeToString(b)
}

func newInternetMessageID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return "<" + smtpServer + strings.ToUpper(fmt.Sprintf("%x", b)) + "@" + smtpHost + ">"
}

// mailboxLocked returns the store of a mailbox, creating it.
func (g *Graph) mailboxLocked(tenantID, address string) *graphMailbox {
	mb := g.mailboxes[address]
	if mb == nil {
		mb = &graphMailbox{address: address, items: make(map[string]*graphItem)}
		g.e.mu.Lock()
		if t := g.e.tenants[tenantID]; t != nil && t.users[address] != nil {
			mb.oid = t.users[address].oid
		}
		g.e.mu.Unlock()
		if mb.oid == "" {
			mb.oid = NewGUID()
		}
		g.mailboxes[address] = mb
	}
	return mb
}

// item finds a message of the request's mailbox; folder "" means any.
func (x *graphRequest) itemLocked(folder string) *graphItem {
	mb := x.g.mailboxLocked(x.claims.TenantID, x.mailbox)
	it := mb.items[x.msgID]
	if it == nil || (folder != "" && it.folder != folder) {
		return nil
	}
	return it
}

// JSON forms of a message resource.
type graphEmailAddress struct {
	Name    string `json:"name,omitempty"`
	Address string `json:"address"`
}

type graphRecipient struct {
	EmailAddress graphEmailAddress `json:"emailAddress"`
}

type graphBody struct {
	ContentType string `json:"contentType"`
	Content     string `json:"content"`
}

type graphExtendedProperty struct {
	ID    string `json:"id"`
	Value string `json:"value"`
}

// graphMessageIn is a message resource in a request. Pointers tell a
// property that is absent from one set to null or empty.
type graphMessageIn struct {
	Subject                       *string                  `json:"subject"`
	Body                          *graphBody               `json:"body"`
	From                          *graphRecipient          `json:"from"`
	Sender                        *graphRecipient          `json:"sender"`
	ToRecipients                  *[]graphRecipient        `json:"toRecipients"`
	CcRecipients                  *[]graphRecipient        `json:"ccRecipients"`
	BccRecipients                 *[]graphRecipient        `json:"bccRecipients"`
	ReplyTo                       *[]graphRecipient        `json:"replyTo"`
	InternetMessageID             *string                  `json:"internetMessageId"`
	InternetMessageHeaders        *[]GraphHeader           `json:"internetMessageHeaders"`
	SingleValueExtendedProperties *[]graphExtendedProperty `json:"singleValueExtendedProperties"`
	Attachments                   []graphAttachmentIn      `json:"attachments"`
	// Accepted and ignored.
	ODataType                  json.RawMessage `json:"@odata.type"`
	Importance                 json.RawMessage `json:"importance"`
	IsDeliveryReceiptRequested json.RawMessage `json:"isDeliveryReceiptRequested"`
	IsReadReceiptRequested     json.RawMessage `json:"isReadReceiptRequested"`
	Categories                 json.RawMessage `json:"categories"`
	Flag                       json.RawMessage `json:"flag"`
	IsRead                     json.RawMessage `json:"isRead"`
}

type graphMessageOut struct {
	Context                string           `json:"@odata.context,omitempty"`
	ID                     string           `json:"id"`
	CreatedDateTime        string           `json:"createdDateTime"`
	LastModifiedDateTime   string           `json:"lastModifiedDateTime"`
	SentDateTime           *string          `json:"sentDateTime"`
	HasAttachments         bool             `json:"hasAttachments"`
	InternetMessageID      string           `json:"internetMessageId"`
	Subject                string           `json:"subject"`
	BodyPreview            string           `json:"bodyPreview"`
	Importance             string           `json:"importance"`
	ParentFolderID         string           `json:"parentFolderId"`
	ConversationID         string           `json:"conversationId"`
	IsRead                 bool             `json:"isRead"`
	IsDraft                bool             `json:"isDraft"`
	Body                   graphBody        `json:"body"`
	Sender                 *graphRecipient  `json:"sender"`
	From                   *graphRecipient  `json:"from"`
	ToRecipients           []graphRecipient `json:"toRecipients"`
	CcRecipients           []graphRecipient `json:"ccRecipients"`
	BccRecipients          []graphRecipient `json:"bccRecipients"`
	ReplyTo                []graphRecipient `json:"replyTo"`
	InternetMessageHeaders []GraphHeader    `json:"internetMessageHeaders,omitempty"`
}

const graphTimeLayout = "2006-01-02T15:04:05Z"

func recipientsOut(as []graphAddress) []graphRecipient {
	out := make([]graphRecipient, len(as))
	for i, a := range as {
		out[i] = graphRecipient{graphEmailAddress{Name: cmpOr(a.Name, a.Address), Address: a.Address}}
	}
	return out
}

func recipientsIn(rs []graphRecipient) ([]graphAddress, *GraphError) {
	out := make([]graphAddress, 0, len(rs))
	for _, r := range rs {
		addr := strings.TrimSpace(r.EmailAddress.Address)
		if addr == "" || !strings.Contains(addr, "@") {
			return nil, errGraphBadRequest("ErrorInvalidRecipients", "At least one recipient isn't valid., Recipient '%s' isn't resolved. All recipients must be resolved before a message can be submitted.", addr)
		}
		out = append(out, graphAddress{Name: r.EmailAddress.Name, Address: addr})
	}
	return out, nil
}

func folderID(folder string) string {
	return "AQMkA" + base64.URLEncoding.EncodeToString([]byte("m365sim-folder-"+folder))
}

// view is the JSON of an item.
func (x *graphRequest) view(it *graphItem, context bool) graphMessageOut {
	body := graphBody{ContentType: "text", Content: it.textBody}
	if it.htmlBody != "" {
		body = graphBody{ContentType: "html", Content: it.htmlBody}
	}
	preview := it.textBody
	if preview == "" {
		preview = it.htmlBody
	}
	if r := []rune(preview); len(r) > 255 {
		preview = string(r[:255])
	}
	out := graphMessageOut{
		ID:                     it.id,
		CreatedDateTime:        it.created.UTC().Format(graphTimeLayout),
		LastModifiedDateTime:   it.modified.UTC().Format(graphTimeLayout),
		HasAttachments:         slices.ContainsFunc(it.attachments, func(a *graphAttachment) bool { return !a.inline }),
		InternetMessageID:      it.messageID,
		Subject:                it.subject,
		BodyPreview:            preview,
		Importance:             "normal",
		ParentFolderID:         folderID(it.folder),
		ConversationID:         it.conversationID,
		IsRead:                 true,
		IsDraft:                it.folder == folderDrafts,
		Body:                   body,
		ToRecipients:           recipientsOut(it.to),
		CcRecipients:           recipientsOut(it.cc),
		BccRecipients:          recipientsOut(it.bcc),
		ReplyTo:                recipientsOut(it.replyTo),
		InternetMessageHeaders: it.headers,
	}
	if !it.sent.IsZero() {
		s := it.sent.UTC().Format(graphTimeLayout)
		out.SentDateTime = &s
	}
	if it.from != nil {
		r := recipientsOut([]graphAddress{*it.from})[0]
		out.From, out.Sender = &r, &r
	}
	if context {
		out.Context = fmt.Sprintf("https://graph.microsoft.com/v1.0/$metadata#users('%s')/messages/$entity", url.PathEscape(x.mailbox))
	}
	return out
}

// decodeJSON decodes a request body strictly, answering as Graph does to
// an unknown property.
func decodeJSON(body []byte, v any, typeName string) *GraphError {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		msg := err.Error()
		if name, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
			return errGraphBadRequest("RequestBodyRead", "The property '%s' does not exist on type '%s'. Make sure to only use property names that are defined by the type or mark the type as open type.", strings.Trim(name, `"`), typeName)
		}
		return errGraphBadRequest("RequestBodyRead", "Cannot read the request body: %s", msg)
	}
	return nil
}

var xHeaderRE = regexp.MustCompile(`^[Xx]-[!-9;-~]+$`)

// apply sets the properties of m on it.
func (it *graphItem) apply(m *graphMessageIn) *GraphError {
	var err *GraphError
	if m.Subject != nil {
		it.subject = *m.Subject
	}
	if m.Body != nil {
		switch strings.ToLower(m.Body.ContentType) {
		case "html":
			it.htmlBody, it.textBody = m.Body.Content, ""
		case "text", "":
			it.textBody, it.htmlBody = m.Body.Content, ""
		default:
			return errGraphBadRequest("RequestBodyRead", "Requested value '%s' was not found.", m.Body.ContentType)
		}
	}
	if m.From != nil {
		a, err := recipientsIn([]graphRecipient{*m.From})
		if err != nil {
			return err
		}
		it.from = &a[0]
	}
	for _, f := range []struct {
		in  *[]graphRecipient
		out *[]graphAddress
	}{{m.ToRecipients, &it.to}, {m.CcRecipients, &it.cc}, {m.BccRecipients, &it.bcc}, {m.ReplyTo, &it.replyTo}} {
		if f.in == nil {
			continue
		}
		if *f.out, err = recipientsIn(*f.in); err != nil {
			return err
		}
	}
	if m.InternetMessageID != nil {
		id := strings.TrimSpace(*m.InternetMessageID)
		if !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, ">") || !strings.Contains(id, "@") {
			return errGraphBadRequest("InvalidInternetMessageId", "The internet message id '%s' is invalid.", id)
		}
		it.messageID = id
	}
	if m.InternetMessageHeaders != nil {
		for _, h := range *m.InternetMessageHeaders {
			if !xHeaderRE.MatchString(h.Name) {
				return errGraphBadRequest("InvalidInternetMessageHeader", "The internet message header name '%s' should start with 'x-' or 'X-'.", h.Name)
			}
		}
		it.headers = slices.Clone(*m.InternetMessageHeaders)
	}
	if m.SingleValueExtendedProperties != nil {
		for _, p := range *m.SingleValueExtendedProperties {
			// PidTagDeleteAfterSubmit: no copy in Sent Items.
			if strings.EqualFold(strings.Join(strings.Fields(p.ID), " "), "Boolean 0x0E01") {
				it.deleteAfterSubmit = strings.EqualFold(p.Value, "true")
			}
		}
	}
	for _, a := range m.Attachments {
		att, err := a.attachment()
		if err != nil {
			return err
		}
		it.attachments = append(it.attachments, att)
	}
	return nil
}

// messageFromRequest reads a message from a request body: base64 MIME with
// Content-Type text/plain, or a JSON resource.
func (x *graphRequest) messageFromRequest(body []byte) (*graphItem, *GraphError) {
	ct, _, _ := mime.ParseMediaType(x.r.Header.Get("Content-Type"))
	switch ct {
	case "text/plain":
		raw, err := decodeBase64MIME(body)
		if err != nil {
			return nil, errGraphBadRequest("ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
		}
		return parseMIMEItem(raw)
	case "application/json":
		var m graphMessageIn
		if f := decodeJSON(body, &m, "microsoft.graph.message"); f != nil {
			return nil, f
		}
		it := &graphItem{}
		if f := it.apply(&m); f != nil {
			return nil, f
		}
		return it, nil
	}
	return nil, &GraphError{Status: http.StatusUnsupportedMediaType, Code: "BadRequest", Message: fmt.Sprintf("Content-Type '%s' is not supported: send application/json, or text/plain with base64 MIME.", x.r.Header.Get("Content-Type"))}
}

func decodeBase64MIME(body []byte) ([]byte, error) {
	s := strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, string(body))
	if s == "" {
		return nil, errors.New("empty")
	}
	return base64.StdEncoding.DecodeString(s)
}

// storeLocked files a new item in a folder of the request's mailbox.
func (x *graphRequest) storeLocked(it *graphItem, folder string) {
	now := x.g.e.now()
	it.id, it.folder = newGraphID(), folder
	if it.created.IsZero() {
		it.created = now
	}
	it.modified = now
	if it.messageID == "" {
		it.messageID = newInternetMessageID()
	}
	if it.conversationID == "" {
		it.conversationID = "AAQkA" + base64.URLEncoding.EncodeToString([]byte(NewGUID()))
	}
	for _, a := range it.attachments {
		if a.id == "" {
			a.id = newGraphID()
			a.modified = now
		}
	}
	x.g.mailboxLocked(x.claims.TenantID, x.mailbox).items[it.id] = it
	x.g.broadcastLocked()
}

func (x *graphRequest) createMessage() {
	body, f := x.readBody(x.g.opts.MaxRequestBytes)
	if f != nil {
		x.fail(f)
		return
	}
	it, f := x.messageFromRequest(body)
	if f != nil {
		x.fail(f)
		return
	}
	if it.size() > x.g.opts.MaxSendSize {
		x.fail(errGraphMessageSize())
		return
	}
	g := x.g
	g.mu.Lock()
	x.storeLocked(it, folderDrafts)
	out := x.view(it, true)
	g.mu.Unlock()
	x.w.Header().Set("Location", fmt.Sprintf("%s/v1.0/users('%s')/messages('%s')", g.url, url.PathEscape(x.mailbox), it.id))
	writeJSON(x.w, http.StatusCreated, out)
}

func (x *graphRequest) getMessage() {
	g := x.g
	g.mu.Lock()
	it := x.itemLocked("")
	if it == nil {
		g.mu.Unlock()
		x.fail(errGraphItemNotFound())
		return
	}
	out := x.view(it, true)
	g.mu.Unlock()
	writeJSON(x.w, http.StatusOK, out)
}

func (x *graphRequest) updateMessage() {
	body, f := x.readBody(x.g.opts.MaxRequestBytes)
	if f != nil {
		x.fail(f)
		return
	}
	var m graphMessageIn
	if f := decodeJSON(body, &m, "microsoft.graph.message"); f != nil {
		x.fail(f)
		return
	}
	if len(m.Attachments) > 0 {
		x.fail(errGraphBadRequest("ErrorInvalidRequest", "Attachments cannot be updated with PATCH; POST them to the attachments of the message."))
		return
	}
	g := x.g
	g.mu.Lock()
	defer g.mu.Unlock()
	it := x.itemLocked("")
	if it == nil {
		x.fail(errGraphItemNotFound())
		return
	}
	if it.folder != folderDrafts && (m.ToRecipients != nil || m.CcRecipients != nil || m.BccRecipients != nil || m.Body != nil || m.From != nil) {
		x.fail(errGraphBadRequest("ErrorInvalidPropertyUpdateSentMessage", "Update operation is invalid for property of a sent message."))
		return
	}
	// Apply to a copy: a failed PATCH changes nothing.
	cp := *it
	if f := cp.apply(&m); f != nil {
		x.fail(f)
		return
	}
	cp.modified = g.e.now()
	*it = cp
	g.broadcastLocked()
	writeJSON(x.w, http.StatusOK, x.view(it, true))
}

func (x *graphRequest) deleteMessage() {
	g := x.g
	g.mu.Lock()
	it := x.itemLocked("")
	if it != nil {
		delete(g.mailboxes[x.mailbox].items, it.id)
		g.broadcastLocked()
	}
	g.mu.Unlock()
	if it == nil {
		x.fail(errGraphItemNotFound())
		return
	}
	x.w.WriteHeader(http.StatusNoContent)
}

// sendMailJSON is the JSON body of sendMail.
type sendMailJSON struct {
	Message         *graphMessageIn `json:"message"`
	SaveToSentItems *bool           `json:"saveToSentItems"`
}

// sendMail sends a message given whole. With MIME (Content-Type
// text/plain, base64), Graph takes the recipients from the To, Cc and Bcc
// header fields, as the simulator does: there is no envelope, so a relay
// whose SMTP envelope differs from the header fields (Bcc, list
// expansion, a header address that was no RCPT) must not use it, and
// creates a draft, sets its recipients and sends it instead. There is no
// saveToSentItems parameter with MIME: a copy is saved.
func (x *graphRequest) sendMail() {
	body, f := x.readBody(x.g.opts.MaxRequestBytes)
	if f != nil {
		x.fail(f)
		return
	}
	ct, _, _ := mime.ParseMediaType(x.r.Header.Get("Content-Type"))
	save := true
	var it *graphItem
	if ct == "application/json" {
		var req sendMailJSON
		if f := decodeJSON(body, &req, "microsoft.graph.sendMail"); f != nil {
			x.fail(f)
			return
		}
		if req.Message == nil {
			x.fail(errGraphBadRequest("ErrorInvalidParameter", "The value of the parameter 'Message' is empty."))
			return
		}
		it = &graphItem{}
		if f := it.apply(req.Message); f != nil {
			x.fail(f)
			return
		}
		if req.SaveToSentItems != nil {
			save = *req.SaveToSentItems
		}
	} else {
		if it, f = x.messageFromRequest(body); f != nil {
			x.fail(f)
			return
		}
	}
	if it.deleteAfterSubmit {
		save = false
	}
	g := x.g
	g.mu.Lock()
	now := g.e.now()
	it.created, it.modified = now, now
	if it.messageID == "" {
		it.messageID = newInternetMessageID()
	}
	if f := x.checkSubmitLocked(it); f != nil {
		g.mu.Unlock()
		x.fail(f)
		return
	}
	g.mu.Unlock()
	x.submit(it, save)
}

// send sends a draft; it moves to Sent Items (with a new ID) unless
// PidTagDeleteAfterSubmit is set on it.
func (x *graphRequest) send() {
	if x.r.ContentLength > 0 {
		if _, f := x.readBody(x.g.opts.MaxRequestBytes); f != nil {
			x.fail(f)
			return
		}
	}
	g := x.g
	g.mu.Lock()
	it := x.itemLocked(folderDrafts)
	if it == nil {
		g.mu.Unlock()
		x.fail(errGraphItemNotFound())
		return
	}
	if f := x.checkSubmitLocked(it); f != nil {
		g.mu.Unlock()
		x.fail(f)
		return
	}
	// Taken out under the lock: a second send of it finds nothing.
	delete(g.mailboxes[x.mailbox].items, it.id)
	g.broadcastLocked()
	g.mu.Unlock()
	x.submit(it, !it.deleteAfterSubmit)
}

// checkSubmitLocked checks what Exchange checks when a message is
// submitted: recipients, the right to send as its From, its size.
func (x *graphRequest) checkSubmitLocked(it *graphItem) *GraphError {
	if len(it.to)+len(it.cc)+len(it.bcc) == 0 {
		return errGraphNoRecipients()
	}
	if it.from == nil {
		it.from = &graphAddress{Address: x.mailbox}
	}
	if !x.mayActAs(it.from.Address) {
		return errGraphSendAs()
	}
	if it.size() > x.g.opts.MaxSendSize {
		return errGraphMessageSize()
	}
	return nil
}

// submit delivers a message, records it, saves a copy in Sent Items and
// answers 202, or drops the connection for DropAfterAccept.
func (x *graphRequest) submit(it *graphItem, save bool) {
	g := x.g
	now := g.e.now()
	it.sent = now
	mimeMsg := buildMIME(it, now, false)
	m := GraphMessage{
		Mailbox:         x.mailbox,
		AppID:           x.appID,
		Via:             x.ep,
		From:            it.from.Address,
		Subject:         it.subject,
		MessageID:       it.messageID,
		TextBody:        it.textBody,
		HTMLBody:        it.htmlBody,
		Headers:         slices.Clone(it.headers),
		SaveToSentItems: save,
		SentAt:          now,
		Size:            int64(len(mimeMsg)),
		SHA256:          sha256.Sum256(mimeMsg),
	}
	if x.claims.IDType == "user" {
		m.User = x.claims.UPN
	}
	m.BodyType, m.Body = "text", it.textBody
	if it.htmlBody != "" {
		m.BodyType, m.Body = "html", it.htmlBody
	}
	for _, list := range []struct {
		in  []graphAddress
		out *[]string
	}{{it.to, &m.To}, {it.cc, &m.Cc}, {it.bcc, &m.Bcc}} {
		for _, a := range list.in {
			*list.out = append(*list.out, a.Address)
			if l := strings.ToLower(a.Address); !slices.Contains(m.Recipients, l) {
				m.Recipients = append(m.Recipients, l)
			}
		}
	}
	for _, a := range it.attachments {
		m.Attachments = append(m.Attachments, GraphAttachment{
			Name: a.name, ContentType: a.contentType, ContentID: a.contentID,
			IsInline: a.inline, Size: a.size, SHA256: a.sha,
		})
	}
	if m.Size <= g.opts.KeepBytes {
		m.MIME = mimeMsg
	}
	if imapSrv := g.opts.IMAP; imapSrv != nil {
		for _, rcpt := range m.Recipients {
			if imapSrv.user(rcpt) == nil {
				continue
			}
			if err := imapSrv.Deliver(rcpt, mimeMsg); err != nil {
				g.srv.ErrorLog.Printf("delivering to %s: %v", rcpt, err)
			}
		}
		if u := imapSrv.user(x.mailbox); save && u != nil {
			if _, err := u.Append("Sent Items", literal(buildMIME(it, now, true)), &imapAppendSeen); err != nil {
				g.srv.ErrorLog.Printf("saving to Sent Items of %s: %v", x.mailbox, err)
			}
		}
	}
	mimeMsg = nil
	g.mu.Lock()
	if save {
		cp := *it
		cp.attachments = make([]*graphAttachment, len(it.attachments))
		for i, a := range it.attachments {
			meta := *a
			meta.data = nil
			cp.attachments[i] = &meta
		}
		cp.created = now
		x.storeLocked(&cp, folderSentItems)
	}
	g.sent = append(g.sent, m)
	g.broadcastLocked()
	g.mu.Unlock()
	if g.takeDrop() {
		dropConnection(x.w)
	}
	x.w.Header().Set("Content-Length", "0")
	x.w.WriteHeader(http.StatusAccepted)
}

// graphFilterRE is the one $filter the simulator understands, the one to
// find a message by its Message-ID.
var graphFilterRE = regexp.MustCompile(`^\s*internetMessageId\s+eq\s+'((?:[^']|'')*)'\s*$`)

// listMessages lists a well-known folder: sentitems, drafts, inbox
// (always empty: Graph's own mail does not land there).
func (x *graphRequest) listMessages() {
	folder := strings.ToLower(x.folder)
	if folder != folderSentItems && folder != folderDrafts && folder != folderInbox {
		x.fail(errGraphItemNotFound())
		return
	}
	q := x.r.URL.Query()
	var wantID string
	filtered := false
	if f := q.Get("$filter"); f != "" {
		m := graphFilterRE.FindStringSubmatch(f)
		if m == nil {
			x.fail(errGraphBadRequest("ErrorInvalidUrlQueryFilter", "The simulator supports only $filter=internetMessageId eq '<id>', not: %s", f))
			return
		}
		wantID, filtered = strings.ReplaceAll(m[1], "''", "'"), true
	}
	top := 10
	if t := q.Get("$top"); t != "" {
		if _, err := fmt.Sscanf(t, "%d", &top); err != nil || top < 1 || top > 1000 {
			x.fail(errGraphBadRequest("BadRequest", "Invalid $top value '%s'.", t))
			return
		}
	}
	g := x.g
	g.mu.Lock()
	var items []*graphItem
	for _, it := range g.mailboxLocked(x.claims.TenantID, x.mailbox).items {
		if it.folder == folder && (!filtered || it.messageID == wantID) {
			items = append(items, it)
		}
	}
	slices.SortFunc(items, func(a, b *graphItem) int { return b.modified.Compare(a.modified) })
	if len(items) > top {
		items = items[:top]
	}
	out := struct {
		Context string            `json:"@odata.context"`
		Value   []graphMessageOut `json:"value"`
	}{
		Context: fmt.Sprintf("https://graph.microsoft.com/v1.0/$metadata#users('%s')/mailFolders('%s')/messages", url.PathEscape(x.mailbox), x.folder),
		Value:   make([]graphMessageOut, 0, len(items)),
	}
	for _, it := range items {
		out.Value = append(out.Value, x.view(it, false))
	}
	g.mu.Unlock()
	writeJSON(x.w, http.StatusOK, out)
}
