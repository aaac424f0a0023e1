package m365sim

import (
	"errors"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// authCodeLifetime is how long an authorization code may be redeemed.
const authCodeLifetime = 10 * time.Minute

// authRequest is a validated request to the authorization endpoint.
type authRequest struct {
	tenant    *tenant
	app       *app
	redirect  string // where the browser goes back to
	sentURI   string // the redirect_uri parameter, which the token request repeats
	scope     *scopeSet
	state     string
	challenge string // S256 code_challenge, or ""
	prompt    string
	loginHint string
}

// authCode is an authorization code waiting to be redeemed.
type authCode struct {
	tenantID, clientID string
	redirectURI        string // the redirect_uri parameter of the request
	challenge          string
	user               *user
	amr                []string
	scope              *scopeSet
	issued             time.Time
	redeemed           bool
}

// SignInError is an error Entra shows on its sign-in page instead of
// sending the browser back to the app: an unknown tenant or app, a
// redirect URI that is not registered (AADSTS50011, AADSTS500113), a
// locked (AADSTS50053) or disabled (AADSTS50057) account.
type SignInError struct {
	Code        int    // the AADSTS number
	Description string // "AADSTSnnn: text"
}

func (e *SignInError) Error() string { return "m365sim: sign-in page: " + e.Description }

func signInError(f *Failure) *SignInError {
	return &SignInError{Code: f.Codes[0], Description: f.Description}
}

// parseAuthorize validates an authorization request to tenantName. A
// failure without a request is shown on the page; one with a request is
// sent back to its redirect URI.
func (e *Entra) parseAuthorize(tenantName string, q url.Values) (*authRequest, *Failure) {
	t, f := e.pathTenant(tenantName)
	if f != nil {
		return nil, f
	}
	t, a, f := e.findApp(t, tenantName, q.Get("client_id"))
	if f != nil {
		return nil, f
	}
	req := &authRequest{
		tenant:    t,
		app:       a,
		sentURI:   q.Get("redirect_uri"),
		state:     q.Get("state"),
		prompt:    q.Get("prompt"),
		loginHint: q.Get("login_hint"),
	}
	switch {
	case len(a.RedirectURIs) == 0:
		return nil, errNoReplyAddress(a.ClientID)
	case req.sentURI == "":
		// Entra falls back on the registered one.
		req.redirect = a.RedirectURIs[0]
	case !redirectRegistered(a.RedirectURIs, req.sentURI):
		return nil, errReplyMismatch(req.sentURI, a.ClientID)
	default:
		req.redirect = req.sentURI
	}
	if _, err := url.Parse(req.redirect); err != nil {
		return nil, errReplyMismatch(req.redirect, a.ClientID)
	}
	// From here on errors go back to the app.
	switch rt := q.Get("response_type"); rt {
	case "code":
	case "":
		return req, errMissingParam("response_type")
	default:
		return req, errResponseType(rt)
	}
	if req.scope, f = parseScope(q.Get("scope"), tenantName, false); f != nil {
		return req, f
	}
	req.challenge = q.Get("code_challenge")
	method := q.Get("code_challenge_method")
	switch {
	case req.challenge == "" && method == "":
	case method != "S256":
		return req, errChallengeMethod(method)
	case !challengeRE.MatchString(req.challenge):
		return req, errChallengeSize()
	}
	if req.prompt == "none" {
		// The simulator keeps no browser sessions.
		return req, errLoginRequired()
	}
	return req, nil
}

// challengeRE is an S256 code challenge: 32 bytes in unpadded base64url.
var challengeRE = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// redirectRegistered matches a redirect URI as Entra does: exactly, but
// for loopback URIs registered without a port, whose port is ignored.
func redirectRegistered(registered []string, uri string) bool {
	if slices.Contains(registered, uri) {
		return true
	}
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "http" || !isLoopback(u.Hostname()) {
		return false
	}
	for _, r := range registered {
		ru, err := url.Parse(r)
		if err == nil && ru.Scheme == "http" && ru.Port() == "" && ru.Hostname() == u.Hostname() &&
			strings.TrimSuffix(ru.Path, "/") == strings.TrimSuffix(u.Path, "/") && ru.RawQuery == u.RawQuery {
			return true
		}
	}
	return false
}

func isLoopback(host string) bool { return host == "localhost" || host == "127.0.0.1" }

// issueCode signs u in for req and returns where the browser goes: the
// redirect URI with code, state and session_state.
func (e *Entra) issueCode(req *authRequest, u *user, amr []string) string {
	code := "1.A" + randomString(96)
	now := e.now()
	e.mu.Lock()
	for k, c := range e.codes {
		if !now.Before(c.issued.Add(authCodeLifetime)) {
			delete(e.codes, k)
		}
	}
	e.codes[code] = &authCode{
		tenantID:    req.tenant.id,
		clientID:    req.app.ClientID,
		redirectURI: req.sentURI,
		challenge:   req.challenge,
		user:        u,
		amr:         amr,
		scope:       req.scope,
		issued:      now,
	}
	e.mu.Unlock()
	return withQuery(req.redirect, "code", code, "state", req.state, "session_state", NewGUID())
}

// errorRedirect is where the browser goes when req fails with f: Entra's
// error, error_description and error_uri, and the state.
func (e *Entra) errorRedirect(req *authRequest, f *Failure) string {
	desc := f.Description + "\r\nTrace ID: " + NewGUID() + "\r\nCorrelation ID: " + NewGUID() +
		"\r\nTimestamp: " + e.now().UTC().Format(timestampLayout)
	var uri string
	if len(f.Codes) > 0 {
		uri = errorURI(f.Codes[0])
	}
	return withQuery(req.redirect, "error", f.Error, "error_description", desc, "error_uri", uri, "state", req.state)
}

// withQuery adds the non-empty values of kv to the query of base.
func withQuery(base string, kv ...string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base // parseAuthorize checked it
	}
	q := u.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Set(kv[i], kv[i+1])
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Authorize plays a browser at authorizeURL (the authorization endpoint
// with its query) in which upn signs in, and returns the URL Entra sends
// the browser to: the redirect URI with code and state, or with error and
// error_description for a request Entra refuses that way (bad scope,
// code_challenge_method, prompt=none, a failure injected at
// EndpointAuthorize). upn "" means the login_hint. MFA is assumed done.
// Errors Entra shows on its own page are a *SignInError.
func (e *Entra) Authorize(authorizeURL, upn string) (redirect string, err error) {
	req, f, err := e.authorizeURL(authorizeURL)
	if err != nil {
		return "", err
	}
	if f == nil {
		f = e.injectedFailure(EndpointAuthorize)
	}
	if f != nil {
		return e.errorRedirect(req, f), nil
	}
	if upn == "" {
		upn = req.loginHint
	}
	u, amr, f := e.signInUser(req.tenant, upn)
	if f != nil {
		return "", signInError(f)
	}
	return e.issueCode(req, u, amr), nil
}

// AuthorizeDeny plays a browser at authorizeURL in which the user declines
// the consent prompt: it returns the redirect URI with error=access_denied
// and AADSTS65004.
func (e *Entra) AuthorizeDeny(authorizeURL string) (redirect string, err error) {
	req, f, err := e.authorizeURL(authorizeURL)
	if err != nil {
		return "", err
	}
	if f == nil {
		f = errConsentDeclined()
	}
	return e.errorRedirect(req, f), nil
}

// authorizeURL parses and validates an authorization URL; a failure to
// show on the page is an error, one to send back comes with its request.
func (e *Entra) authorizeURL(authorizeURL string) (*authRequest, *Failure, error) {
	u, err := url.Parse(authorizeURL)
	if err != nil {
		return nil, nil, err
	}
	tenantName, ok := strings.CutSuffix(strings.TrimPrefix(u.Path, "/"), "/oauth2/v2.0/authorize")
	if !ok || tenantName == "" || strings.Contains(tenantName, "/") {
		return nil, nil, errors.New("m365sim: not an authorization endpoint: " + authorizeURL)
	}
	req, f := e.parseAuthorize(tenantName, u.Query())
	if req == nil {
		return nil, nil, signInError(f)
	}
	return req, f, nil
}
