package m365sim

import (
	"crypto/subtle"
	"net/http"
	"net/url"
	"strings"
)

func (e *Entra) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{tenant}/oauth2/v2.0/token", e.handleToken)
	mux.HandleFunc("/{tenant}/oauth2/v2.0/devicecode", e.handleDeviceCode)
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", e.handleOpenIDConfig)
	mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", e.handleKeys)
	mux.HandleFunc("/devicelogin", e.handleDeviceLogin)
	return mux
}

const (
	grantClientCredentials = "client_credentials"
	grantRefreshToken      = "refresh_token"
	grantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
	grantPassword          = "password"
)

// tokenResponse is Entra's successful answer, in its field order.
type tokenResponse struct {
	TokenType    string `json:"token_type"`
	Scope        string `json:"scope,omitempty"`
	ExpiresIn    int64  `json:"expires_in"`
	ExtExpiresIn int64  `json:"ext_expires_in"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
}

// tokenRequest is what every grant needs: the tenant from the path and the
// authenticated client.
type tokenRequest struct {
	form         url.Values
	tenantName   string
	tenant       *tenant
	app          *app
	confidential bool // authenticated with a secret
}

func (e *Entra) handleToken(w http.ResponseWriter, r *http.Request) {
	e.tokenRequests.Add(1)
	e.mu.Lock()
	e.broadcastLocked()
	e.mu.Unlock()
	if !e.waitHold(r) {
		return
	}
	if f := e.injectedFailure(); f != nil {
		e.writeFailure(w, r, f)
		return
	}
	resp, f := e.token(r)
	if f != nil {
		e.writeFailure(w, r, f)
		return
	}
	e.traceHeaders(w, r)
	writeJSON(w, http.StatusOK, resp)
}

func (e *Entra) token(r *http.Request) (*tokenResponse, *Failure) {
	if r.Method != http.MethodPost {
		return nil, errMethod(r.Method)
	}
	// Entra reads only form bodies; a JSON body reads as missing grant_type.
	r.ParseForm()
	form := r.PostForm
	tenantName := r.PathValue("tenant")
	t, f := e.pathTenant(tenantName)
	if f != nil {
		return nil, f
	}
	grantType := form.Get("grant_type")
	var publicAllowed bool
	switch grantType {
	case "":
		return nil, errMissingParam("grant_type")
	case grantClientCredentials:
	case grantRefreshToken, grantDeviceCode, grantPassword:
		publicAllowed = true
	default:
		return nil, errUnsupportedGrant(grantType)
	}
	req := &tokenRequest{form: form, tenantName: tenantName}
	if req.tenant, req.app, req.confidential, f = e.authenticateClient(r, t, tenantName, publicAllowed); f != nil {
		return nil, f
	}
	switch grantType {
	case grantClientCredentials:
		return e.clientCredentials(req)
	case grantRefreshToken:
		return e.refreshToken(req)
	case grantDeviceCode:
		return e.deviceCodeToken(req)
	default:
		return e.password(req)
	}
}

// multiTenant are the path names that select no tenant.
var multiTenant = []string{"common", "organizations", "consumers"}

// pathTenant resolves the tenant of the URL path; it is nil for
// /common and its kin.
func (e *Entra) pathTenant(name string) (*tenant, *Failure) {
	for _, m := range multiTenant {
		if strings.EqualFold(name, m) {
			return nil, nil
		}
	}
	e.mu.Lock()
	t := e.tenantLocked(name)
	e.mu.Unlock()
	if t == nil {
		return nil, errTenantNotFound(name)
	}
	return t, nil
}

// findApp looks the client up in tenant t, or, for /common (t nil), in
// every tenant: apps are single-tenant, which /common refuses.
func (e *Entra) findApp(t *tenant, tenantName, clientID string) (*tenant, *app, *Failure) {
	if clientID == "" {
		return nil, nil, errMissingParam("client_id")
	}
	clientID = strings.ToLower(clientID)
	e.mu.Lock()
	defer e.mu.Unlock()
	if t == nil {
		for _, t := range e.tenants {
			if t.apps[clientID] != nil {
				return nil, nil, errNotMultiTenant(clientID)
			}
		}
		return nil, nil, errAppNotFound(clientID, tenantName)
	}
	a := t.apps[clientID]
	if a == nil {
		return nil, nil, errAppNotFound(clientID, t.domain)
	}
	copied := *a
	return t, &copied, nil
}

// authenticateClient finds the client and checks its secret, sent in the
// body or with HTTP Basic (client_secret_basic). Without a secret only
// public client flows pass, and only if the app allows them.
func (e *Entra) authenticateClient(r *http.Request, t *tenant, tenantName string, publicAllowed bool) (*tenant, *app, bool, *Failure) {
	clientID, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if id, s, ok := r.BasicAuth(); ok {
		clientID, secret = formUnescape(id), formUnescape(s)
	}
	t, a, f := e.findApp(t, tenantName, clientID)
	if f != nil {
		return nil, nil, false, f
	}
	if r.PostForm.Get("client_assertion") != "" {
		// No certificates are registered in the simulator.
		return nil, nil, false, errAssertionKey(a.ClientID)
	}
	switch {
	case secret != "" && a.Secret == "":
		return nil, nil, false, errPublicClientSecret()
	case secret != "":
		if !equalSecret(secret, a.Secret) {
			return nil, nil, false, errInvalidSecret(a.ClientID)
		}
		if !a.SecretExpires.IsZero() && !e.now().Before(a.SecretExpires) {
			return nil, nil, false, errSecretExpired(a.ClientID)
		}
		return t, a, true, nil
	case publicAllowed && a.PublicClientFlows:
		return t, a, false, nil
	default:
		return nil, nil, false, errSecretRequired()
	}
}

func equalSecret(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// formUnescape undoes the form encoding RFC 6749 asks of Basic credentials;
// clients that skip it still work unless their secret holds '%' or '+'.
func formUnescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

func (e *Entra) clientCredentials(req *tokenRequest) (*tokenResponse, *Failure) {
	s, f := parseScope(req.form.Get("scope"), req.tenantName, true)
	if f != nil {
		return nil, f
	}
	tok, lifetime, err := e.accessToken(req.tenant, req.app, req.confidential, nil, s.res, nil)
	if err != nil {
		return nil, errServer(err)
	}
	secs := int64(lifetime.Seconds())
	return &tokenResponse{TokenType: "Bearer", ExpiresIn: secs, ExtExpiresIn: secs, AccessToken: tok}, nil
}
