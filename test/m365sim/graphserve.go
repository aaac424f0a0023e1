package m365sim

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Graph's error answers.
func errGraphNoToken() *GraphError {
	return &GraphError{Status: http.StatusUnauthorized, Code: "InvalidAuthenticationToken", Message: "Access token is empty."}
}

func errGraphToken(err error) *GraphError {
	msg := "Access token validation failure."
	switch {
	case errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenNotYetValid):
		msg = "Lifetime validation failed, the token is expired."
	case errors.Is(err, ErrTokenAudience):
		msg = "Access token validation failure. Invalid audience."
	case errors.Is(err, ErrTokenMalformed):
		msg = "IDX14100: JWT is not well formed, there are no dots (.)."
	}
	return &GraphError{Status: http.StatusUnauthorized, Code: "InvalidAuthenticationToken", Message: msg}
}

func errGraphAccessDenied() *GraphError {
	return &GraphError{Status: http.StatusForbidden, Code: "ErrorAccessDenied", Message: "Access is denied. Check credentials and try again."}
}

// errGraphAccessPolicy: an application access policy keeps the app out of
// the mailbox.
func errGraphAccessPolicy() *GraphError {
	return &GraphError{Status: http.StatusForbidden, Code: "ErrorAccessDenied", Message: "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."}
}

func errGraphSendAs() *GraphError {
	return &GraphError{Status: http.StatusForbidden, Code: "ErrorSendAsDenied", Message: "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message."}
}

func errGraphInvalidUser(id string) *GraphError {
	return &GraphError{Status: http.StatusNotFound, Code: "ErrorInvalidUser", Message: fmt.Sprintf("The requested user '%s' is invalid.", id)}
}

func errGraphNoREST() *GraphError {
	return &GraphError{Status: http.StatusNotFound, Code: "MailboxNotEnabledForRESTAPI", Message: "The mailbox is either inactive, soft-deleted, or is hosted on-premise."}
}

func errGraphItemNotFound() *GraphError {
	return &GraphError{Status: http.StatusNotFound, Code: "ErrorItemNotFound", Message: "The specified object was not found in the store."}
}

func errGraphRequestTooLarge() *GraphError {
	return &GraphError{Status: http.StatusRequestEntityTooLarge, Code: "BadRequest", Message: "The maximum request length supported is 4MB."}
}

// errGraphMessageSize: the message would exceed the mailbox's
// MaxSendSize. (Graph's status for it is unconfirmed: 400 here.)
func errGraphMessageSize() *GraphError {
	return &GraphError{Status: http.StatusBadRequest, Code: "ErrorMessageSizeExceeded", Message: "The message exceeds the maximum supported size."}
}

func errGraphConcurrency(retry time.Duration) *GraphError {
	return &GraphError{Status: http.StatusTooManyRequests, Code: "ApplicationThrottled", Message: "Application is over its MailboxConcurrency limit.", RetryAfter: retry}
}

func errGraphRateLimit(retry time.Duration) *GraphError {
	return &GraphError{Status: http.StatusTooManyRequests, Code: "ApplicationThrottled", Message: "Application is over its MailboxRequestLimit limit.", RetryAfter: retry}
}

func errGraphBadRequest(code, format string, args ...any) *GraphError {
	return &GraphError{Status: http.StatusBadRequest, Code: code, Message: fmt.Sprintf(format, args...)}
}

func errGraphNoRecipients() *GraphError {
	return errGraphBadRequest("ErrorInvalidRecipients", "At least one recipient isn't valid., A message can't be sent because it contains no recipients.")
}

// graphErrorBody is Graph's error JSON.
type graphErrorBody struct {
	Error graphErrorJSON `json:"error"`
}

type graphErrorJSON struct {
	Code       string         `json:"code"`
	Message    string         `json:"message"`
	InnerError graphInnerJSON `json:"innerError"`
}

type graphInnerJSON struct {
	Date            string `json:"date"`
	RequestID       string `json:"request-id"`
	ClientRequestID string `json:"client-request-id"`
}

// graphRequest is one request on its way through the simulator.
type graphRequest struct {
	g     *Graph
	w     http.ResponseWriter
	r     *http.Request
	reqID string
	ep    GraphEndpoint

	// From the URL.
	userID string // as in the URL; "me" for /me
	msgID  string
	folder string
	sessID string

	claims  *Claims
	appID   string
	mailbox string // lower case
	session *uploadSession
}

func (x *graphRequest) fail(f *GraphError) {
	g := x.g
	g.errMu.Lock()
	e := *f
	g.lastErr = &e
	g.errMu.Unlock()
	if f.RetryAfter > 0 {
		x.w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(f.RetryAfter.Seconds()))))
	}
	if f.Status == http.StatusUnauthorized {
		x.w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="`+graph.appID()+`"`)
	}
	crid := x.r.Header.Get("client-request-id")
	if crid == "" {
		crid = x.reqID
	}
	writeJSON(x.w, f.Status, graphErrorBody{Error: graphErrorJSON{
		Code:    f.Code,
		Message: f.Message,
		InnerError: graphInnerJSON{
			Date:            g.e.now().UTC().Format("2006-01-02T15:04:05"),
			RequestID:       x.reqID,
			ClientRequestID: crid,
		},
	}})
}

func (g *Graph) serveHTTP(w http.ResponseWriter, r *http.Request) {
	x := &graphRequest{g: g, w: w, r: r, reqID: NewGUID()}
	w.Header().Set("request-id", x.reqID)
	if crid := r.Header.Get("client-request-id"); crid != "" {
		w.Header().Set("client-request-id", crid)
	}
	if f := x.route(); f != nil {
		x.fail(f)
		return
	}
	g.mu.Lock()
	g.requests[x.ep]++
	g.mu.Unlock()
	var f *GraphError
	if x.ep == GraphUploadChunk {
		f = x.authenticateUpload()
	} else {
		f = x.authenticate()
	}
	if f != nil {
		x.fail(f)
		return
	}
	if f := g.takeInjection(x.ep); f != nil {
		x.fail(f)
		return
	}
	release, f := g.admit(x.appID, x.mailbox)
	if f != nil {
		x.fail(f)
		return
	}
	defer release()
	if !g.wait(x.ep) {
		panic(http.ErrAbortHandler) // closing: no answer
	}
	switch x.ep {
	case GraphSendMail:
		x.sendMail()
	case GraphCreateMessage:
		x.createMessage()
	case GraphGetMessage:
		x.getMessage()
	case GraphUpdateMessage:
		x.updateMessage()
	case GraphDeleteMessage:
		x.deleteMessage()
	case GraphAddAttachment:
		x.addAttachment()
	case GraphCreateUploadSession:
		x.createUploadSession()
	case GraphUploadChunk:
		x.uploadChunk()
	case GraphSend:
		x.send()
	case GraphListMessages:
		x.listMessages()
	}
}

// route sets ep and the URL's parts.
func (x *graphRequest) route() *GraphError {
	p := x.r.URL.Path
	if rest, ok := strings.CutPrefix(p, "/api/v2.0/"); ok {
		return x.routeUpload(rest)
	}
	rest, ok := strings.CutPrefix(p, "/v1.0/")
	if !ok {
		return errGraphBadRequest("BadRequest", "Invalid version.")
	}
	segs := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	switch {
	case strings.EqualFold(segs[0], "me"):
		x.userID, segs = "me", segs[1:]
	case strings.EqualFold(segs[0], "users") && len(segs) >= 2 && segs[1] != "":
		x.userID, segs = segs[1], segs[2:]
	default:
		return errSegment(segs[0])
	}
	is := func(i int, name string) bool { return len(segs) > i && strings.EqualFold(segs[i], name) }
	method := x.r.Method
	want := http.MethodPost
	switch {
	case len(segs) == 1 && is(0, "sendMail"):
		x.ep = GraphSendMail
	case len(segs) == 1 && is(0, "messages"):
		x.ep = GraphCreateMessage
	case len(segs) == 2 && is(0, "messages"):
		x.msgID = segs[1]
		switch method {
		case http.MethodGet:
			x.ep, want = GraphGetMessage, method
		case http.MethodPatch:
			x.ep, want = GraphUpdateMessage, method
		case http.MethodDelete:
			x.ep, want = GraphDeleteMessage, method
		default:
			x.ep, want = GraphGetMessage, http.MethodGet
		}
	case len(segs) == 3 && is(0, "messages") && is(2, "attachments"):
		x.msgID, x.ep = segs[1], GraphAddAttachment
	case len(segs) == 4 && is(0, "messages") && is(2, "attachments") && is(3, "createUploadSession"):
		x.msgID, x.ep = segs[1], GraphCreateUploadSession
	case len(segs) == 3 && is(0, "messages") && is(2, "send"):
		x.msgID, x.ep = segs[1], GraphSend
	case len(segs) == 3 && is(0, "mailFolders") && is(2, "messages"):
		x.folder, x.ep, want = segs[1], GraphListMessages, http.MethodGet
	case len(segs) == 0:
		return errGraphBadRequest("BadRequest", "The simulator serves only mail endpoints.")
	default:
		return errSegment(segs[len(segs)-1])
	}
	if method != want {
		return &GraphError{Status: http.StatusMethodNotAllowed, Code: "BadRequest", Message: fmt.Sprintf("The HTTP method '%s' is not allowed on this resource.", method)}
	}
	return nil
}

func errSegment(seg string) *GraphError {
	return errGraphBadRequest("BadRequest", "Resource not found for the segment '%s'.", seg)
}

// authenticate checks the bearer token and the mailbox of the URL as
// Graph and Exchange do.
func (x *graphRequest) authenticate() *GraphError {
	g := x.g
	auth := x.r.Header.Get("Authorization")
	scheme, tok, _ := strings.Cut(auth, " ")
	if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return errGraphNoToken()
	}
	c, err := g.e.ValidateToken(strings.TrimSpace(tok))
	if err != nil {
		return errGraphToken(err)
	}
	if c.Audience != graph.aud && c.Audience != graph.appID() {
		return errGraphToken(ErrTokenAudience)
	}
	x.claims, x.appID = c, strings.ToLower(c.AppID)
	if x.userID == "me" {
		if c.IDType != "user" {
			return errGraphBadRequest("BadRequest", "/me request is only valid with delegated authentication flow.")
		}
		x.mailbox = strings.ToLower(c.UPN)
	} else {
		mb, ok := g.resolveMailbox(c.TenantID, x.userID)
		if !ok {
			return errGraphInvalidUser(x.userID)
		}
		x.mailbox = mb
	}
	g.mu.Lock()
	noREST := g.noREST[x.mailbox]
	g.mu.Unlock()
	if noREST {
		return errGraphNoREST()
	}
	return x.authorize()
}

// resolveMailbox finds the mailbox a URL names: a user's UPN or object ID
// in the tenant, or a mailbox of AddMailbox or of the IMAP simulator.
func (g *Graph) resolveMailbox(tenantID, id string) (string, bool) {
	id = strings.ToLower(id)
	g.e.mu.Lock()
	if t := g.e.tenants[tenantID]; t != nil {
		if u := t.users[id]; u != nil {
			g.e.mu.Unlock()
			return id, true
		}
		for upn, u := range t.users {
			if u.oid == id {
				g.e.mu.Unlock()
				return upn, true
			}
		}
	}
	g.e.mu.Unlock()
	if !strings.Contains(id, "@") {
		return "", false
	}
	g.mu.Lock()
	extra := g.extra[id]
	g.mu.Unlock()
	if extra || (g.opts.IMAP != nil && g.opts.IMAP.user(id) != nil) {
		return id, true
	}
	return "", false
}

// permissions an endpoint needs: application roles, and delegated scopes
// for the user's own mailbox and for another one.
func (x *graphRequest) permissions() (roles, own, shared []string) {
	switch x.ep {
	case GraphSendMail, GraphSend:
		return []string{"Mail.Send"}, []string{"Mail.Send"}, []string{"Mail.Send.Shared"}
	case GraphGetMessage, GraphListMessages:
		return []string{"Mail.ReadBasic", "Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite"},
			[]string{"Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite"},
			[]string{"Mail.Read.Shared", "Mail.ReadWrite.Shared"}
	}
	return []string{"Mail.ReadWrite"}, []string{"Mail.ReadWrite"}, []string{"Mail.ReadWrite.Shared"}
}

// authorize: the token's permission for the endpoint, and for app tokens
// the application access policy; for user tokens their own mailbox or one
// they are a delegate of.
func (x *graphRequest) authorize() *GraphError {
	g, c := x.g, x.claims
	roles, own, shared := x.permissions()
	hasAny := func(have, want []string) bool {
		return slices.ContainsFunc(want, func(p string) bool { return slices.Contains(have, p) })
	}
	switch c.IDType {
	case "app":
		if !hasAny(c.Roles, roles) {
			return errGraphAccessDenied()
		}
		if !g.policyAllows(c.TenantID, x.appID, x.mailbox) {
			return errGraphAccessPolicy()
		}
		return nil
	case "user":
		if strings.EqualFold(c.UPN, x.mailbox) {
			if !hasAny(c.Scopes, own) {
				return errGraphAccessDenied()
			}
			return nil
		}
		if !hasAny(c.Scopes, shared) || !g.e.isDelegate(c.TenantID, x.mailbox, c.UPN) {
			return errGraphAccessDenied()
		}
		return nil
	}
	return errGraphAccessDenied()
}

func (g *Graph) policyAllows(tenantID, appID, mailbox string) bool {
	g.mu.Lock()
	policy, ok := g.policies[appID]
	g.mu.Unlock()
	if !ok {
		g.e.mu.Lock()
		if t := g.e.tenants[tenantID]; t != nil {
			if a := t.apps[appID]; a != nil {
				policy = a.Mailboxes
			}
		}
		g.e.mu.Unlock()
	}
	return slices.ContainsFunc(policy, func(m string) bool { return strings.EqualFold(m, mailbox) })
}

// mayActAs: whether the request's identity may send as from, an address:
// the mailbox of the URL for app tokens, the user for delegated ones, and
// any mailbox they are a delegate of (SendAs).
func (x *graphRequest) mayActAs(from string) bool {
	from = strings.ToLower(from)
	c := x.claims
	actor := x.mailbox
	if c.IDType == "user" {
		actor = strings.ToLower(c.UPN)
	}
	if from == actor {
		return true
	}
	if c.IDType == "user" && from == x.mailbox && x.g.e.isDelegate(c.TenantID, x.mailbox, c.UPN) {
		return true
	}
	return x.g.e.isDelegate(c.TenantID, from, actor)
}

// readBody reads the request body up to limit; a larger one gets
// errGraphRequestTooLarge.
func (x *graphRequest) readBody(limit int64) ([]byte, *GraphError) {
	if x.r.ContentLength > limit {
		return nil, errGraphRequestTooLarge()
	}
	b, err := io.ReadAll(io.LimitReader(x.r.Body, limit+1))
	if err != nil {
		return nil, errGraphBadRequest("BadRequest", "Reading the request failed: %v", err)
	}
	if int64(len(b)) > limit {
		return nil, errGraphRequestTooLarge()
	}
	return b, nil
}

// constantTimeEqual compares secrets.
func constantTimeEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
