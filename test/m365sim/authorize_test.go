package m365sim

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	webID       = "3c3c3c3c-2222-4333-8444-955555555555" // confidential, with a secret
	nativeID    = "4d4d4d4d-2222-4333-8444-955555555555" // public, no secret
	noReplyID   = "5e5e5e5e-2222-4333-8444-955555555555" // no redirect URI
	webRedirect = "https://app.contoso.example/auth"
	verifier    = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk" // RFC 7636's example
)

// challenge is verifier's S256 code challenge.
func challenge(v string) string {
	sum := sha256.Sum256([]byte(v))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// addAuthCodeApps registers a web app with a secret and a native public
// client that redirects to http://localhost on any port.
func (f *fixture) addAuthCodeApps() {
	f.e.AddApp(App{Tenant: domain, ClientID: webID, Secret: secret, RedirectURIs: []string{webRedirect}})
	f.e.AddApp(App{Tenant: domain, ClientID: nativeID, RedirectURIs: []string{"http://localhost", "https://login.microsoftonline.com/common/oauth2/nativeclient"}})
	f.e.AddApp(App{Tenant: domain, ClientID: noReplyID})
}

func (f *fixture) authorizeURL(kv ...string) string {
	q := form(append([]string{
		"client_id", nativeID, "response_type", "code", "redirect_uri", "http://localhost:51234",
		"scope", userScope + " openid profile", "state", "st/ä te=1&x", "code_challenge", challenge(verifier),
		"code_challenge_method", "S256",
	}, kv...)...)
	for k, v := range q {
		if v[0] == "" {
			q.Del(k)
		}
	}
	return f.e.URL() + "/" + domain + "/oauth2/v2.0/authorize?" + q.Encode()
}

// redirected splits a redirect into its URL without query and the query.
func redirected(t *testing.T, redirect string) (string, url.Values) {
	t.Helper()
	u, err := url.Parse(redirect)
	if err != nil {
		t.Fatalf("redirect %q: %v", redirect, err)
	}
	q := u.Query()
	u.RawQuery = ""
	return u.String(), q
}

func redeem(clientID, code, redirectURI, v string, kv ...string) url.Values {
	return form(append([]string{"grant_type", "authorization_code", "client_id", clientID, "code", code, "redirect_uri", redirectURI, "code_verifier", v}, kv...)...)
}

func TestAuthorizationCodeFlow(t *testing.T) {
	f := newFixture(t)
	f.addAuthCodeApps()
	redirect, err := f.e.Authorize(f.authorizeURL("login_hint", alice), "")
	if err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	base, q := redirected(t, redirect)
	if base != "http://localhost:51234" || q.Get("state") != "st/ä te=1&x" || q.Get("code") == "" || !isGUID(q.Get("session_state")) {
		t.Fatalf("redirect: got %s", redirect)
	}
	tr := f.token(t, domain, redeem(nativeID, q.Get("code"), "http://localhost:51234", verifier))
	if tr.RefreshToken == "" || tr.IDToken == "" {
		t.Fatalf("got refresh_token %q, id_token %q; want both", tr.RefreshToken, tr.IDToken)
	}
	c, err := f.e.ValidateToken(tr.AccessToken)
	if err != nil {
		t.Fatalf("ValidateToken: %v", err)
	}
	if c.UPN != alice || c.AppID != nativeID || c.Audience != "https://outlook.office.com" || strings.Join(c.Scopes, " ") != "IMAP.AccessAsUser.All SMTP.Send" {
		t.Fatalf("claims: got %+v", *c)
	}
	if err := f.e.MayAccess(c, alice, "IMAP.AccessAsUser.All"); err != nil {
		t.Fatalf("MayAccess: %v", err)
	}
	f.token(t, domain, refresh(tr.RefreshToken, "client_id", nativeID))

	// The same code twice.
	status, eb := f.tokenError(t, domain, redeem(nativeID, q.Get("code"), "http://localhost:51234", verifier))
	checkError(t, status, eb, 400, "invalid_grant", 54005)

	// Without offline_access and openid: an access token only.
	redirect, err = f.e.Authorize(f.authorizeURL("scope", "https://outlook.office.com/IMAP.AccessAsUser.All"), bob)
	if err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	_, q = redirected(t, redirect)
	tr = f.token(t, domain, redeem(nativeID, q.Get("code"), "http://localhost:51234", verifier))
	if tr.RefreshToken != "" || tr.IDToken != "" {
		t.Fatalf("got refresh_token %q, id_token %q; want neither", tr.RefreshToken, tr.IDToken)
	}

	// A confidential web app authenticates at the token endpoint; no PKCE.
	redirect, err = f.e.Authorize(f.authorizeURL("client_id", webID, "redirect_uri", webRedirect, "code_challenge", "", "code_challenge_method", ""), alice)
	if err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	_, q = redirected(t, redirect)
	status, eb = f.tokenError(t, domain, redeem(webID, q.Get("code"), webRedirect, ""))
	checkError(t, status, eb, 401, "invalid_client", 7000218)
	tr = f.token(t, domain, redeem(webID, q.Get("code"), webRedirect, "", "client_secret", secret))
	if c, err := f.e.ValidateToken(tr.AccessToken); err != nil || c.AppID != webID {
		t.Fatalf("web app token: got %+v, %v", c, err)
	}
}

func TestAuthorizationCodeErrors(t *testing.T) {
	f := newFixture(t)
	f.addAuthCodeApps()
	code := func(t *testing.T) string {
		t.Helper()
		redirect, err := f.e.Authorize(f.authorizeURL(), alice)
		if err != nil {
			t.Fatalf("Authorize: %v", err)
		}
		_, q := redirected(t, redirect)
		return q.Get("code")
	}
	const cb = "http://localhost:51234"
	tests := []struct {
		name       string
		form       func(code string) url.Values
		wantStatus int
		wantErr    string
		wantCode   int
	}{
		{"wrong verifier", func(c string) url.Values { return redeem(nativeID, c, cb, strings.Repeat("a", 43)) }, 400, "invalid_grant", 50148},
		{"no verifier", func(c string) url.Values { return redeem(nativeID, c, cb, "") }, 400, "invalid_grant", 50148},
		{"other redirect URI", func(c string) url.Values { return redeem(nativeID, c, "http://localhost:4000", verifier) }, 400, "invalid_grant", 500112},
		{"other client", func(c string) url.Values { return redeem(publicID, c, cb, verifier) }, 400, "invalid_grant", 70000},
		{"unknown code", func(string) url.Values { return redeem(nativeID, "1.Anonsense", cb, verifier) }, 400, "invalid_grant", 9002313},
		{"no code", func(string) url.Values { return redeem(nativeID, "", cb, verifier) }, 400, "invalid_request", 900144},
		{"secret to a public client", func(c string) url.Values { return redeem(nativeID, c, cb, verifier, "client_secret", "x") }, 401, "invalid_client", 700025},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, eb := f.tokenError(t, domain, tt.form(code(t)))
			checkError(t, status, eb, tt.wantStatus, tt.wantErr, tt.wantCode)
		})
	}
	t.Run("expired", func(t *testing.T) {
		c := code(t)
		f.clock.Add(authCodeLifetime)
		status, eb := f.tokenError(t, domain, redeem(nativeID, c, cb, verifier))
		checkError(t, status, eb, 400, "invalid_grant", 70008)
	})
	t.Run("a failed redemption leaves the code", func(t *testing.T) {
		c := code(t)
		f.tokenError(t, domain, redeem(nativeID, c, cb, strings.Repeat("a", 43)))
		f.token(t, domain, redeem(nativeID, c, cb, verifier))
	})
}

func TestAuthorizeRedirectURIs(t *testing.T) {
	f := newFixture(t)
	f.addAuthCodeApps()
	accepted := []struct{ clientID, uri string }{
		{nativeID, "http://localhost"},
		{nativeID, "http://localhost:8400"},
		{nativeID, "http://localhost:8400/"},
		{nativeID, "https://login.microsoftonline.com/common/oauth2/nativeclient"},
		{webID, webRedirect},
	}
	for _, a := range accepted {
		redirect, err := f.e.Authorize(f.authorizeURL("client_id", a.clientID, "redirect_uri", a.uri), alice)
		if err != nil {
			t.Fatalf("%s: Authorize: %v", a.uri, err)
		}
		if !strings.HasPrefix(redirect, a.uri) {
			t.Fatalf("%s: redirected to %s", a.uri, redirect)
		}
	}
	refused := []struct {
		name, clientID, uri string
		code                int
	}{
		{"https localhost", nativeID, "https://localhost:8400", 50011},
		{"other path", nativeID, "http://localhost:8400/other", 50011},
		{"127.0.0.1 not registered", nativeID, "http://127.0.0.1:8400", 50011},
		{"other host", webID, "https://evil.example/auth", 50011},
		{"web app on another port", webID, "https://app.contoso.example:8443/auth", 50011},
		{"nothing registered", noReplyID, "http://localhost", 500113},
		{"unknown app", "99999999-2222-4333-8444-955555555555", "http://localhost", 700016},
	}
	for _, r := range refused {
		t.Run(r.name, func(t *testing.T) {
			_, err := f.e.Authorize(f.authorizeURL("client_id", r.clientID, "redirect_uri", r.uri), alice)
			var se *SignInError
			if !errors.As(err, &se) || se.Code != r.code || !strings.HasPrefix(se.Description, "AADSTS") {
				t.Fatalf("got %v, want a SignInError with AADSTS%d", err, r.code)
			}
		})
	}
}

func TestAuthorizeErrorRedirects(t *testing.T) {
	f := newFixture(t)
	f.addAuthCodeApps()
	tests := []struct {
		name    string
		url     string
		wantErr string
		code    int
	}{
		{"plain challenge", f.authorizeURL("code_challenge", verifier, "code_challenge_method", "plain"), "invalid_request", 90023},
		{"no method", f.authorizeURL("code_challenge_method", ""), "invalid_request", 90023},
		{"short challenge", f.authorizeURL("code_challenge", "abc"), "invalid_request", 501491},
		{"token response", f.authorizeURL("response_type", "token"), "unsupported_response_type", 70005},
		{"bad scope", f.authorizeURL("scope", "https://outlook.office.com/Nope"), "invalid_scope", 70011},
		{"mixed resources", f.authorizeURL("scope", "User.Read https://outlook.office.com/SMTP.Send"), "invalid_scope", 28000},
		{"prompt none", f.authorizeURL("prompt", "none"), "login_required", 50058},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			redirect, err := f.e.Authorize(tt.url, alice)
			if err != nil {
				t.Fatalf("Authorize: %v", err)
			}
			checkRedirectError(t, redirect, tt.wantErr, tt.code)
		})
	}
	t.Run("declined", func(t *testing.T) {
		redirect, err := f.e.AuthorizeDeny(f.authorizeURL())
		if err != nil {
			t.Fatalf("AuthorizeDeny: %v", err)
		}
		checkRedirectError(t, redirect, "access_denied", 65004)
	})
	t.Run("injected", func(t *testing.T) {
		f.e.FailNextAt(EndpointAuthorize, 1, Failure{Error: "access_denied", Codes: []int{53003}, Description: "AADSTS53003: Access has been blocked by Conditional Access policies."})
		redirect, err := f.e.Authorize(f.authorizeURL(), alice)
		if err != nil {
			t.Fatalf("Authorize: %v", err)
		}
		checkRedirectError(t, redirect, "access_denied", 53003)
		if redirect, err = f.e.Authorize(f.authorizeURL(), alice); err != nil || !strings.Contains(redirect, "code=") {
			t.Fatalf("after the injected failure: got %s, %v; want a code", redirect, err)
		}
	})
	t.Run("locked", func(t *testing.T) {
		f.e.UpdateUser(domain, bob, func(u *User) { u.Locked = true })
		_, err := f.e.Authorize(f.authorizeURL(), bob)
		var se *SignInError
		if !errors.As(err, &se) || se.Code != 50053 {
			t.Fatalf("got %v, want a SignInError with AADSTS50053", err)
		}
	})
	t.Run("not an authorize URL", func(t *testing.T) {
		if _, err := f.e.Authorize(f.e.URL()+"/"+domain+"/oauth2/v2.0/token", alice); err == nil {
			t.Fatalf("got nil, want an error")
		}
	})
}

func checkRedirectError(t *testing.T, redirect, wantErr string, wantCode int) {
	t.Helper()
	base, q := redirected(t, redirect)
	if base != "http://localhost:51234" || q.Get("state") != "st/ä te=1&x" || q.Has("code") {
		t.Fatalf("redirect: got %s", redirect)
	}
	prefix := "AADSTS" + strconv.Itoa(wantCode) + ": "
	if q.Get("error") != wantErr || !strings.HasPrefix(q.Get("error_description"), prefix) ||
		!strings.Contains(q.Get("error_description"), "\r\nTrace ID: ") || q.Get("error_uri") != errorURI(wantCode) {
		t.Fatalf("redirect: got error %q, description %q, error_uri %q; want %s %s...", q.Get("error"), q.Get("error_description"), q.Get("error_uri"), wantErr, prefix)
	}
}

// TestAuthorizePage completes the flow as a person would in a browser.
func TestAuthorizePage(t *testing.T) {
	f := newFixture(t)
	f.addAuthCodeApps()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(u string) (*http.Response, string) {
		t.Helper()
		resp, err := client.Get(u)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	authURL := f.authorizeURL("login_hint", alice)
	resp, body := get(authURL)
	if resp.StatusCode != 200 || !strings.Contains(body, `name="password"`) || !strings.Contains(body, alice) {
		t.Fatalf("GET authorize: got %d %s", resp.StatusCode, body)
	}
	u, _ := url.Parse(authURL)
	signIn := func(kv ...string) *http.Response {
		t.Helper()
		resp, err := client.PostForm(f.e.URL()+u.Path, form(append([]string{"request", u.RawQuery}, kv...)...))
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := signIn("username", alice, "password", "wrong"); resp.StatusCode != 200 {
		t.Fatalf("wrong password: got %d, want the form again", resp.StatusCode)
	}
	resp = signIn("username", alice, "password", alicePass)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("sign in: got %d, want 302", resp.StatusCode)
	}
	_, q := redirected(t, resp.Header.Get("Location"))
	f.token(t, domain, redeem(nativeID, q.Get("code"), "http://localhost:51234", verifier))

	resp = signIn("cancel", "1")
	checkRedirectError(t, resp.Header.Get("Location"), "access_denied", 65004)

	resp, body = get(f.authorizeURL("redirect_uri", "http://evil.example/"))
	if resp.StatusCode != 400 || !strings.Contains(body, "AADSTS50011") {
		t.Fatalf("bad redirect URI: got %d %s, want an error page with AADSTS50011", resp.StatusCode, body)
	}
	resp, _ = get(f.authorizeURL("scope", "https://outlook.office.com/Nope"))
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("bad scope: got %d, want a redirect", resp.StatusCode)
	}
	checkRedirectError(t, resp.Header.Get("Location"), "invalid_scope", 70011)
}

func TestAuthorizeMFAAndPasswordExpiry(t *testing.T) {
	f := newFixture(t)
	f.addAuthCodeApps()
	expires := f.clock.Now().Add(10 * 24 * time.Hour)
	f.e.UpdateUser(domain, alice, func(u *User) { u.MFARequired, u.PasswordExpires = true, expires })
	redirect, err := f.e.Authorize(f.authorizeURL(), alice)
	if err != nil {
		t.Fatalf("Authorize with MFA required: %v", err)
	}
	_, q := redirected(t, redirect)
	tr := f.token(t, domain, redeem(nativeID, q.Get("code"), "http://localhost:51234", verifier))
	var at, id map[string]any
	decodePart(t, strings.Split(tr.AccessToken, ".")[1], &at)
	decodePart(t, strings.Split(tr.IDToken, ".")[1], &id)
	if amr, _ := at["amr"].([]any); len(amr) != 2 || amr[1] != "mfa" {
		t.Fatalf("amr: got %v, want [pwd mfa]", at["amr"])
	}
	iat := int64(id["iat"].(float64))
	if want := strconv.FormatInt(expires.Unix()-iat, 10); id["pwd_exp"] != want || id["pwd_url"] != changePasswordURL {
		t.Fatalf("id token: got pwd_exp %v pwd_url %v, want %s", id["pwd_exp"], id["pwd_url"], want)
	}
}
