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
	mux.HandleFunc("/{tenant}/oauth2/v2.0/authorize", e.handleAuthorize)
	return mux
}

const (
	grantClientCredentials = "client_credentials"
	grantRefreshToken      = "refresh_token"
	grantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
	grantPassword          = "password"
	grantAuthorizationCode = "authorization_code"
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
	form       url.Values
	tenantName string
	tenant     *tenant
	app        *app
	acr        string // appidacr: "0" public, "1" secret, "2" certificate
}

func (e *Entra) handleToken(w http.ResponseWriter, r *http.Request) {
	e.tokenRequests.Add(1)
	client := requestClientID(r)
	e.mu.Lock()
	e.byClient[client]++
	e.broadcastLocked()
	e.mu.Unlock()
	if !e.waitHold(r) {
		return
	}
	if f := e.injectedFailure(EndpointToken); f != nil {
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
	var public publicPolicy
	switch grantType {
	case "":
		return nil, errMissingParam("grant_type")
	case grantClientCredentials:
		public = confidentialOnly
	case grantDeviceCode, grantPassword:
		public = publicClientFlows
	case grantRefreshToken, grantAuthorizationCode:
		public = publicClients
	default:
		return nil, errUnsupportedGrant(grantType)
	}
	req := &tokenRequest{form: form, tenantName: tenantName}
	if req.tenant, req.app, req.acr, f = e.authenticateClient(r, t, tenantName, public); f != nil {
		return nil, f
	}
	switch grantType {
	case grantClientCredentials:
		return e.clientCredentials(req)
	case grantRefreshToken:
		return e.refreshToken(req)
	case grantDeviceCode:
		return e.deviceCodeToken(req)
	case grantAuthorizationCode:
		return e.authorizationCode(req)
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

// publicPolicy says when a grant may go without client authentication.
type publicPolicy int

const (
	confidentialOnly  publicPolicy = iota // client credentials
	publicClientFlows                     // device code, password: "Allow public client flows"
	publicClients                         // authorization code, refresh: any app without credentials, too
)

// appidacr values: how the client authenticated.
const (
	acrPublic      = "0"
	acrSecret      = "1"
	acrCertificate = "2"
)

// authenticateClient finds the client and checks its credential: a secret,
// sent in the body or with HTTP Basic (client_secret_basic), or a client
// assertion signed with a registered certificate. Without one only public
// clients pass, as policy says.
func (e *Entra) authenticateClient(r *http.Request, t *tenant, tenantName string, policy publicPolicy) (*tenant, *app, string, *Failure) {
	clientID, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if id, s, ok := r.BasicAuth(); ok {
		clientID, secret = formUnescape(id), formUnescape(s)
	}
	assertion, assertionType := r.PostForm.Get("client_assertion"), r.PostForm.Get("client_assertion_type")
	t, a, f := e.findApp(t, tenantName, clientID)
	if f != nil {
		return nil, nil, "", f
	}
	hasCredentials := a.Secret != "" || len(a.Certificates) > 0
	switch {
	case (assertion != "" || assertionType != "") && secret != "":
		return nil, nil, "", errTwoCredentials()
	case (assertion != "" || secret != "") && !hasCredentials:
		return nil, nil, "", errPublicClientSecret()
	case assertion != "" || assertionType != "":
		if assertionType != assertionTypeJWT {
			return nil, nil, "", errAssertionType()
		}
		if assertion == "" {
			return nil, nil, "", errMissingParam("client_assertion")
		}
		if f := e.checkAssertion(t, a, tenantName, assertion); f != nil {
			return nil, nil, "", f
		}
		return t, a, acrCertificate, nil
	case secret != "":
		if a.Secret == "" || !equalSecret(secret, a.Secret) {
			return nil, nil, "", errInvalidSecret(a.ClientID)
		}
		if !a.SecretExpires.IsZero() && !e.now().Before(a.SecretExpires) {
			return nil, nil, "", errSecretExpired(a.ClientID)
		}
		return t, a, acrSecret, nil
	case policy != confidentialOnly && a.PublicClientFlows,
		policy == publicClients && !hasCredentials:
		return t, a, acrPublic, nil
	default:
		return nil, nil, "", errSecretRequired()
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
	tok, lifetime, err := e.accessToken(req.tenant, req.app, req.acr, nil, nil, s.res, nil)
	if err != nil {
		return nil, errServer(err)
	}
	secs := int64(lifetime.Seconds())
	return &tokenResponse{TokenType: "Bearer", ExpiresIn: secs, ExtExpiresIn: secs, AccessToken: tok}, nil
}
