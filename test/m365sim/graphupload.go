package m365sim

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// graphAttachmentIn is a fileAttachment in a request.
type graphAttachmentIn struct {
	ODataType    string `json:"@odata.type"`
	Name         string `json:"name"`
	ContentType  string `json:"contentType"`
	ContentBytes string `json:"contentBytes"`
	IsInline     bool   `json:"isInline"`
	ContentID    string `json:"contentId"`
	Size         *int64 `json:"size"`
}

func (a *graphAttachmentIn) attachment() (*graphAttachment, *GraphError) {
	if !strings.EqualFold(a.ODataType, "#microsoft.graph.fileAttachment") {
		if a.ODataType == "" {
			return nil, errGraphBadRequest("RequestBodyRead", "The property 'contentBytes' does not exist on type 'microsoft.graph.attachment'. Make sure to only use property names that are defined by the type or mark the type as open type.")
		}
		return nil, errGraphBadRequest("ErrorInvalidRequest", "The simulator supports only fileAttachment, not %s.", a.ODataType)
	}
	if a.Name == "" {
		return nil, errGraphBadRequest("ErrorInvalidRequest", "The attachment name is required.")
	}
	data, err := base64.StdEncoding.DecodeString(a.ContentBytes)
	if err != nil {
		return nil, errGraphBadRequest("RequestBodyRead", "Cannot convert the literal '%.20s…' to the expected type 'Edm.Binary'.", a.ContentBytes)
	}
	return &graphAttachment{
		name:        a.Name,
		contentType: a.ContentType,
		contentID:   a.ContentID,
		inline:      a.IsInline,
		data:        data,
		size:        int64(len(data)),
		sha:         sha256.Sum256(data),
	}, nil
}

type graphAttachmentOut struct {
	Context              string `json:"@odata.context,omitempty"`
	ODataType            string `json:"@odata.type"`
	ID                   string `json:"id"`
	LastModifiedDateTime string `json:"lastModifiedDateTime"`
	Name                 string `json:"name"`
	ContentType          string `json:"contentType"`
	Size                 int64  `json:"size"`
	IsInline             bool   `json:"isInline"`
	ContentID            string `json:"contentId,omitempty"`
}

// addAttachment adds a small file attachment (its request within 4 MB,
// so about 3 MB of file) to a draft.
func (x *graphRequest) addAttachment() {
	body, f := x.readBody(x.g.opts.MaxRequestBytes)
	if f != nil {
		x.fail(f)
		return
	}
	var in graphAttachmentIn
	if f := decodeJSON(body, &in, "microsoft.graph.fileAttachment"); f != nil {
		x.fail(f)
		return
	}
	a, f := in.attachment()
	if f != nil {
		x.fail(f)
		return
	}
	g := x.g
	g.mu.Lock()
	defer g.mu.Unlock()
	it := x.itemLocked(folderDrafts)
	if it == nil {
		x.fail(errGraphItemNotFound())
		return
	}
	if it.size()+a.size > g.opts.MaxSendSize {
		x.fail(errGraphMessageSize())
		return
	}
	now := g.e.now()
	a.id, a.modified = newGraphID(), now
	it.attachments = append(it.attachments, a)
	it.modified = now
	g.broadcastLocked()
	writeJSON(x.w, http.StatusCreated, graphAttachmentOut{
		Context:              fmt.Sprintf("https://graph.microsoft.com/v1.0/$metadata#users('%s')/messages('%s')/attachments/$entity", x.mailbox, it.id),
		ODataType:            "#microsoft.graph.fileAttachment",
		ID:                   a.id,
		LastModifiedDateTime: now.UTC().Format(graphTimeLayout),
		Name:                 a.name,
		ContentType:          a.contentType,
		Size:                 a.size,
		IsInline:             a.inline,
		ContentID:            a.contentID,
	})
}

// uploadSession is an attachment upload session of a draft.
type uploadSession struct {
	id, token   string
	tenantID    string
	mailbox     string
	mailboxOID  string
	appID       string
	msgID       string
	name        string
	contentType string
	contentID   string
	inline      bool
	size        int64
	expires     time.Time

	mu       sync.Mutex // serialises its PUTs
	received int64
	data     []byte
	hash     hash.Hash
}

func (s *uploadSession) path() string {
	return fmt.Sprintf("/api/v2.0/Users('%s@%s')/Messages('%s')", s.mailboxOID, s.tenantID, s.msgID)
}

type createUploadSessionJSON struct {
	AttachmentItem *struct {
		AttachmentType string `json:"attachmentType"`
		Name           string `json:"name"`
		Size           int64  `json:"size"`
		ContentType    string `json:"contentType"`
		IsInline       bool   `json:"isInline"`
		ContentID      string `json:"contentId"`
	} `json:"AttachmentItem"`
}

// createUploadSession opens an upload session for a file attachment of a
// draft, of GraphMinUploadSessionSize to GraphMaxAttachmentSize bytes.
func (x *graphRequest) createUploadSession() {
	body, f := x.readBody(x.g.opts.MaxRequestBytes)
	if f != nil {
		x.fail(f)
		return
	}
	var in createUploadSessionJSON
	if f := decodeJSON(body, &in, "microsoft.graph.createUploadSession"); f != nil {
		x.fail(f)
		return
	}
	item := in.AttachmentItem
	switch {
	case item == nil:
		x.fail(errGraphBadRequest("ErrorInvalidParameter", "The value of the parameter 'AttachmentItem' is empty."))
		return
	case !strings.EqualFold(item.AttachmentType, "file"):
		x.fail(errGraphBadRequest("ErrorInvalidParameter", "The attachment type '%s' is not supported for upload sessions.", item.AttachmentType))
		return
	case item.Name == "":
		x.fail(errGraphBadRequest("ErrorInvalidParameter", "The attachment name is required."))
		return
	case item.Size < GraphMinUploadSessionSize:
		x.fail(errGraphBadRequest("ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "Attachment size must be greater than the minimum size."))
		return
	case item.Size > GraphMaxAttachmentSize:
		x.fail(errGraphMessageSize())
		return
	}
	g := x.g
	now := g.e.now()
	g.mu.Lock()
	it := x.itemLocked(folderDrafts)
	if it == nil {
		g.mu.Unlock()
		x.fail(errGraphItemNotFound())
		return
	}
	s := &uploadSession{
		id:          newGraphID(),
		token:       randomString(48),
		tenantID:    x.claims.TenantID,
		mailbox:     x.mailbox,
		mailboxOID:  g.mailboxes[x.mailbox].oid,
		appID:       x.appID,
		msgID:       it.id,
		name:        item.Name,
		contentType: item.ContentType,
		contentID:   item.ContentID,
		inline:      item.IsInline,
		size:        item.Size,
		expires:     now.Add(g.opts.UploadSessionLifetime),
		hash:        sha256.New(),
	}
	g.sessions[s.id] = s
	g.broadcastLocked()
	g.mu.Unlock()
	writeJSON(x.w, http.StatusCreated, struct {
		Context            string   `json:"@odata.context"`
		UploadURL          string   `json:"uploadUrl"`
		ExpirationDateTime string   `json:"expirationDateTime"`
		NextExpectedRanges []string `json:"nextExpectedRanges"`
	}{
		Context:            "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
		UploadURL:          fmt.Sprintf("%s%s/AttachmentSessions('%s')?authtoken=%s", g.url, s.path(), s.id, s.token),
		ExpirationDateTime: s.expires.UTC().Format("2006-01-02T15:04:05.0000000Z"),
		NextExpectedRanges: []string{"0-"},
	})
}

var uploadPathRE = regexp.MustCompile(`(?i)^Users\('([^']*)'\)/Messages\('([^']*)'\)/AttachmentSessions\('([^']*)'\)$`)

func (x *graphRequest) routeUpload(rest string) *GraphError {
	m := uploadPathRE.FindStringSubmatch(rest)
	if m == nil {
		return errSegment(rest)
	}
	x.msgID, x.sessID, x.ep = m[2], m[3], GraphUploadChunk
	if x.r.Method != http.MethodPut && x.r.Method != http.MethodDelete {
		return &GraphError{Status: http.StatusMethodNotAllowed, Code: "BadRequest", Message: fmt.Sprintf("The HTTP method '%s' is not allowed on an upload session.", x.r.Method)}
	}
	return nil
}

// authenticateUpload checks the authtoken of an upload URL. The URL is
// pre-authenticated: an Authorization header (a Graph token, whose
// audience is not Outlook's) is refused, as Outlook does.
func (x *graphRequest) authenticateUpload() *GraphError {
	g := x.g
	if x.r.Header.Get("Authorization") != "" {
		return &GraphError{Status: http.StatusUnauthorized, Code: "InvalidAuthenticationToken", Message: "The upload URL is pre-authenticated: do not send an Authorization header. Audience validation failed."}
	}
	g.mu.Lock()
	s := g.sessions[x.sessID]
	g.mu.Unlock()
	if s == nil || s.msgID != x.msgID {
		return errGraphItemNotFound()
	}
	if !constantTimeEqual(x.r.URL.Query().Get("authtoken"), s.token) {
		return &GraphError{Status: http.StatusUnauthorized, Code: "InvalidAuthenticationToken", Message: "Access token validation failure."}
	}
	if !g.e.now().Before(s.expires) {
		return &GraphError{Status: http.StatusUnauthorized, Code: "InvalidAuthenticationToken", Message: "Lifetime validation failed, the token is expired."}
	}
	x.session, x.mailbox, x.appID = s, s.mailbox, s.appID
	return nil
}

var contentRangeRE = regexp.MustCompile(`^bytes (\d+)-(\d+)/(\d+)$`)

// uploadChunk takes one PUT of an upload session: bytes in order, each PUT
// at most 4 MB; 200 with the next expected range, 201 and the
// attachment's Location after the last byte. DELETE cancels the session.
func (x *graphRequest) uploadChunk() {
	g, s := x.g, x.session
	if x.r.Method == http.MethodDelete {
		g.mu.Lock()
		delete(g.sessions, s.id)
		g.broadcastLocked()
		g.mu.Unlock()
		x.w.WriteHeader(http.StatusNoContent)
		return
	}
	m := contentRangeRE.FindStringSubmatch(strings.TrimSpace(x.r.Header.Get("Content-Range")))
	if m == nil {
		x.fail(errGraphBadRequest("ErrorInvalidRequest", "The Content-Range header is missing or malformed: %q; want \"bytes {start}-{end}/{total}\".", x.r.Header.Get("Content-Range")))
		return
	}
	start, _ := strconv.ParseInt(m[1], 10, 64)
	end, _ := strconv.ParseInt(m[2], 10, 64)
	total, _ := strconv.ParseInt(m[3], 10, 64)
	n := end - start + 1
	switch {
	case total != s.size:
		x.fail(errGraphBadRequest("ErrorInvalidRequest", "The total size %d in Content-Range differs from the attachment size %d of the upload session.", total, s.size))
		return
	case end < start || end >= total:
		x.fail(errGraphBadRequest("ErrorInvalidRequest", "The Content-Range %q is invalid.", m[0]))
		return
	case n > GraphMaxChunkBytes:
		x.fail(errGraphRequestTooLarge())
		return
	case x.r.ContentLength >= 0 && x.r.ContentLength != n:
		x.fail(errGraphBadRequest("ErrorInvalidRequest", "Content-Length %d differs from the %d bytes of Content-Range %q.", x.r.ContentLength, n, m[0]))
		return
	case g.opts.ChunkMultiple > 0 && end+1 < total && n%g.opts.ChunkMultiple != 0:
		x.fail(errGraphBadRequest("ErrorInvalidRequest", "The size of each chunk but the last must be a multiple of %d bytes; got %d.", g.opts.ChunkMultiple, n))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if start != s.received {
		x.fail(&GraphError{Status: http.StatusRequestedRangeNotSatisfiable, Code: "ErrorInvalidRange",
			Message: fmt.Sprintf("Bytes must be uploaded in order: the next expected range starts at %d, not %d.", s.received, start)})
		return
	}
	if s.data == nil {
		s.data = make([]byte, 0, s.size)
	}
	buf := s.data[len(s.data) : len(s.data)+int(n)]
	if _, err := io.ReadFull(x.r.Body, buf); err != nil {
		x.fail(errGraphBadRequest("ErrorInvalidRequest", "The request has fewer bytes than its Content-Range: %v", err))
		return
	}
	if extra, _ := x.r.Body.Read(make([]byte, 1)); extra > 0 {
		x.fail(errGraphBadRequest("ErrorInvalidRequest", "The request has more bytes than its Content-Range."))
		return
	}
	s.data = s.data[:len(s.data)+int(n)]
	s.hash.Write(buf)
	s.received += n

	g.mu.Lock()
	defer g.mu.Unlock()
	if g.sessions[s.id] != s { // deleted meanwhile
		x.fail(errGraphItemNotFound())
		return
	}
	mb := g.mailboxes[s.mailbox]
	it := mb.items[s.msgID]
	if it == nil || it.folder != folderDrafts {
		delete(g.sessions, s.id)
		g.broadcastLocked()
		x.fail(errGraphItemNotFound())
		return
	}
	if it.size()+s.received > g.opts.MaxSendSize {
		delete(g.sessions, s.id)
		g.broadcastLocked()
		x.fail(errGraphMessageSize())
		return
	}
	if s.received < s.size {
		writeJSON(x.w, http.StatusOK, struct {
			Context            string   `json:"@odata.context"`
			ExpirationDateTime string   `json:"ExpirationDateTime"`
			NextExpectedRanges []string `json:"nextExpectedRanges"`
		}{
			Context:            fmt.Sprintf("https://outlook.office.com/api/v2.0/$metadata#Users('%s%%40%s')/Messages('%s')/AttachmentSessions/$entity", s.mailboxOID, s.tenantID, s.msgID),
			ExpirationDateTime: s.expires.UTC().Format("2006-01-02T15:04:05.0000000Z"),
			NextExpectedRanges: []string{strconv.FormatInt(s.received, 10)},
		})
		return
	}
	now := g.e.now()
	a := &graphAttachment{
		id:          newGraphID(),
		name:        s.name,
		contentType: s.contentType,
		contentID:   s.contentID,
		inline:      s.inline,
		data:        s.data,
		size:        s.received,
		modified:    now,
	}
	copy(a.sha[:], s.hash.Sum(nil))
	it.attachments = append(it.attachments, a)
	it.modified = now
	delete(g.sessions, s.id)
	g.broadcastLocked()
	x.w.Header().Set("Location", fmt.Sprintf("%s%s/Attachments('%s')", g.url, s.path(), a.id))
	x.w.Header().Set("Content-Length", "0")
	x.w.WriteHeader(http.StatusCreated)
}
