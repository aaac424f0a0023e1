package m365sim

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTokenLifetime is the middle of Entra's randomised 60-90 minutes.
const DefaultTokenLifetime = 75 * time.Minute

// EntraOptions configure a simulated identity platform.
type EntraOptions struct {
	// TokenLifetime is the expires_in of access tokens; 0 means
	// DefaultTokenLifetime.
	TokenLifetime time.Duration
	// Jitter varies each lifetime by up to ±20%, as Entra does (60-90
	// minutes around 75).
	Jitter bool
	// Now is the clock for issuing and validating tokens and for device
	// codes; nil means time.Now. Tests move it to expire tokens without
	// sleeping.
	Now func() time.Time
}

// Entra is a simulated Microsoft identity platform (v2.0 endpoints) serving
// plain HTTP on a loopback port.
type Entra struct {
	now  func() time.Time
	key  *rsa.PrivateKey
	kid  string
	ln   net.Listener
	srv  *http.Server
	url  string
	done chan struct{} // closed by Close; releases held requests

	tokenRequests atomic.Int64

	mu       sync.Mutex
	byClient map[string]int64 // token requests by client_id
	closed   bool
	changed  chan struct{} // closed and replaced on every observable event
	jitter   bool
	lifetime time.Duration
	tenants  map[string]*tenant // by ID
	domains  map[string]string  // lower-case domain → tenant ID
	grants   map[string]*grant  // by refresh token
	codes    map[string]*authCode
	jtis     map[string]time.Time // client assertions seen, until they expire
	devices  []*deviceAuth
	injected map[Endpoint]*injection
	holds    int

	refreshReuse   int
	strictRotation bool
	gate           chan struct{} // non-nil while held
}

type tenant struct {
	id, domain string
	apps       map[string]*app  // by client ID
	users      map[string]*user // by lower-case UPN
	// delegates are the users with FullAccess to a mailbox, lower case.
	delegates map[string][]string
}

// App is an app registration with its enterprise application (service
// principal) in one tenant.
type App struct {
	Tenant   string // domain or ID; an unknown domain is added as a tenant
	ClientID string // GUID
	Secret   string // "" means a public client
	// SecretExpires is when Secret stops working (AADSTS7000222); zero
	// means never.
	SecretExpires time.Time
	// PublicClientFlows is "Allow public client flows": device code and
	// password grants without a secret.
	PublicClientFlows bool
	// Roles are application permissions with admin consent, e.g.
	// "IMAP.AccessAsApp", "SMTP.SendAsApp". They belong to Office 365
	// Exchange Online unless prefixed with another resource, as in
	// "https://graph.microsoft.com/Mail.Send".
	Roles []string
	// Mailboxes the service principal has FullAccess to in Exchange.
	Mailboxes []string
	// RedirectURIs are the registered redirect (reply) URIs of the
	// authorization code flow. "http://localhost" (or 127.0.0.1) matches
	// that host on any port, with the same path; others match exactly.
	RedirectURIs []string
	// Certificates are the registered certificate credentials: client
	// assertions signed with their keys authenticate the app. Only their
	// NotAfter is checked.
	Certificates []*x509.Certificate
}

type app struct {
	App
	spID string // object ID of the service principal
}

// NewEntra starts a simulated identity platform on 127.0.0.1.
func NewEntra(opts EntraOptions) (*Entra, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	kid, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &Entra{
		now:      opts.Now,
		key:      key,
		kid:      kid,
		ln:       ln,
		url:      "http://" + ln.Addr().String(),
		done:     make(chan struct{}),
		changed:  make(chan struct{}),
		jitter:   opts.Jitter,
		lifetime: opts.TokenLifetime,
		tenants:  make(map[string]*tenant),
		domains:  make(map[string]string),
		grants:   make(map[string]*grant),
		codes:    make(map[string]*authCode),
		jtis:     make(map[string]time.Time),
		injected: make(map[Endpoint]*injection),
		byClient: make(map[string]int64),
	}
	if e.now == nil {
		e.now = time.Now
	}
	e.srv = &http.Server{
		Handler:           e.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(log.Writer(), "m365sim entra: ", log.LstdFlags),
	}
	go e.srv.Serve(ln)
	return e, nil
}

// URL is the authority base, like "https://login.microsoftonline.com":
// the token endpoint is URL()+"/{tenant}/oauth2/v2.0/token".
func (e *Entra) URL() string { return e.url }

// Close stops the server and releases held requests.
func (e *Entra) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	close(e.done)
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		e.srv.Close()
	}
}

// AddTenant adds a tenant with a verified domain and returns its ID. The
// tenant is addressable by domain or ID. Adding a known domain returns the
// existing ID.
func (e *Entra) AddTenant(domain string) (tenantID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.addTenantLocked(domain).id
}

func (e *Entra) addTenantLocked(domain string) *tenant {
	if t := e.tenantLocked(domain); t != nil {
		return t
	}
	t := &tenant{id: NewGUID(), domain: domain, apps: make(map[string]*app), users: make(map[string]*user), delegates: make(map[string][]string)}
	e.tenants[t.id] = t
	e.domains[strings.ToLower(domain)] = t.id
	return t
}

// tenantLocked finds a tenant by domain or ID.
func (e *Entra) tenantLocked(name string) *tenant {
	name = strings.ToLower(name)
	if t := e.tenants[name]; t != nil {
		return t
	}
	return e.tenants[e.domains[name]]
}

// TenantID resolves a tenant domain or ID to the ID.
func (e *Entra) TenantID(domainOrID string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t := e.tenantLocked(domainOrID); t != nil {
		return t.id, true
	}
	return "", false
}

// AddApp registers an app, or replaces the one with the same client ID in
// that tenant (to change its secret, roles or mailboxes).
func (e *Entra) AddApp(a App) {
	if a.ClientID == "" {
		panic("m365sim: App.ClientID is empty")
	}
	a.Roles = slices.Clone(a.Roles)
	a.Mailboxes = slices.Clone(a.Mailboxes)
	a.RedirectURIs = slices.Clone(a.RedirectURIs)
	a.Certificates = slices.Clone(a.Certificates)
	a.ClientID = strings.ToLower(a.ClientID)
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.addTenantLocked(a.Tenant)
	spID := NewGUID()
	if old := t.apps[a.ClientID]; old != nil {
		spID = old.spID
	}
	t.apps[a.ClientID] = &app{App: a, spID: spID}
}

// Issuer is the iss claim of access tokens of a tenant.
func (e *Entra) Issuer(tenantID string) string {
	return "https://sts.windows.net/" + tenantID + "/"
}

// PublicKeyPEM is the token signing key, as a PKIX "PUBLIC KEY" block.
func (e *Entra) PublicKeyPEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(&e.key.PublicKey)
	if err != nil {
		panic(err) // an RSA key always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// KeyID is the kid of the signing key.
func (e *Entra) KeyID() string { return e.kid }

// SetTokenLifetime changes the lifetime of tokens issued from now on; 0
// means DefaultTokenLifetime.
func (e *Entra) SetTokenLifetime(d time.Duration) {
	e.mu.Lock()
	e.lifetime = d
	e.mu.Unlock()
}

func (e *Entra) tokenLifetime() time.Duration {
	e.mu.Lock()
	d, jitter := e.lifetime, e.jitter
	e.mu.Unlock()
	if d == 0 {
		d = DefaultTokenLifetime
	}
	if jitter {
		d = time.Duration(float64(d) * (0.8 + 0.4*mathrand.Float64())).Round(time.Second)
	}
	return d
}

// rolesFor returns the app roles granted on resource res.
func (a *app) rolesFor(res *resource) []string {
	var roles []string
	for _, r := range a.Roles {
		prefix, name, ok := cutResource(r)
		if !ok {
			if res == outlook {
				roles = append(roles, r)
			}
			continue
		}
		if lookupResource(prefix) == res {
			roles = append(roles, name)
		}
	}
	return roles
}

// broadcastLocked wakes everyone waiting for a change.
func (e *Entra) broadcastLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}
