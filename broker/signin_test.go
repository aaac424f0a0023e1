package broker

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/store"
	"github.com/mailbroker/broker/test/m365sim"
)

const (
	simTenant   = "contoso.example"
	simClientID = "22222222-3333-4444-5555-666666666666"
	agent       = "agent@contoso.example"
	agentPass   = "Correct-Horse-7"
	queue       = "queue@contoso.example"
)

// simEnv is a broker against the simulated identity platform, sharing its
// clock, with two accounts signed in by one user: the agent's mailbox and
// a shared queue the agent is a delegate of.
type simEnv struct {
	clock *fakeClock
	entra *m365sim.Entra
	store *memStore
	logs  *logBuffer
	key   []byte
	cfg   *config.Config
	app   *config.App
}

func newSimEnv(t *testing.T, flow config.Flow) *simEnv {
	t.Helper()
	e := &simEnv{clock: newFakeClock(), store: newMemStore(), logs: &logBuffer{}, key: bytes.Repeat([]byte{9}, KeySize)}
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{Now: e.clock.Now, TokenLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	e.entra = entra
	entra.AddTenant(simTenant)
	entra.AddApp(m365sim.App{Tenant: simTenant, ClientID: simClientID, PublicClientFlows: true})
	entra.AddUser(simTenant, agent, agentPass)
	cloud := config.CloudByName("global")
	cloud.Authority = entra.URL()
	e.app = &config.App{Name: "desk", Tenant: simTenant, ClientID: simClientID, Cloud: cloud, Authority: entra.URL(), RedirectURI: config.DefaultRedirectURI}
	scopes := config.DefaultScopes(flow, cloud)
	e.cfg = &config.Config{
		StateDir: t.TempDir(),
		Apps:     []*config.App{e.app},
		Accounts: []*config.Account{
			{Mailbox: agent, Login: agent, LoginUser: agent, App: e.app, Flow: flow, Scopes: scopes},
			{Mailbox: queue, Login: queue, LoginUser: agent, App: e.app, Flow: flow, Scopes: scopes},
		},
	}
	return e
}

func (e *simEnv) broker(t *testing.T) *Broker {
	t.Helper()
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := New(e.cfg, e.store, Options{Key: e.key, Logger: log, Now: e.clock.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b.pw.setParams(argonParams{memory: 64, time: 1, threads: 1})
	t.Cleanup(b.Close)
	return b
}

// signInByPassword runs the interactive password sign-in for the agent.
func (e *simEnv) signInByPassword(t *testing.T, b *Broker) {
	t.Helper()
	s, err := NewSignIn(e.cfg.Accounts[0])
	if err != nil {
		t.Fatal(err)
	}
	s.now = e.clock.Now
	c, err := s.Password(context.Background(), agentPass)
	if err != nil {
		t.Fatalf("password sign-in: %v", err)
	}
	if c.User != agent || c.RefreshToken == "" || c.Password != agentPass {
		t.Fatalf("credentials: user %q, refresh token set %v, password kept %v", c.User, c.RefreshToken != "", c.Password == agentPass)
	}
	got, err := b.SignedIn(context.Background(), queue, c)
	if err != nil {
		t.Fatalf("SignedIn: %v", err)
	}
	if !slices.Equal(sorted(got), []string{agent, queue}) {
		t.Fatalf("SignedIn served %v, want both accounts", got)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// upstreamToken logs in to mailbox and returns the XOAUTH2 user and the
// token's claims.
func (e *simEnv) upstreamToken(t *testing.T, b *Broker, mailbox string) (*m365sim.Claims, error) {
	t.Helper()
	up, err := b.AuthenticateAccount(context.Background(), proxy.IMAP, mailbox)
	if err != nil {
		return nil, err
	}
	if up.Account != mailbox {
		t.Fatalf("upstream account %q, want %q", up.Account, mailbox)
	}
	_, ir, err := up.SASL.Start()
	if err != nil {
		t.Fatal(err)
	}
	user, tok := parseXOAUTH2(t, ir)
	if user != mailbox {
		t.Fatalf("XOAUTH2 user=%q, want %q", user, mailbox)
	}
	return e.entra.ValidateToken(tok)
}

func parseXOAUTH2(t *testing.T, ir []byte) (user, tok string) {
	t.Helper()
	for _, f := range strings.Split(string(ir), "\x01") {
		if u, ok := strings.CutPrefix(f, "user="); ok {
			user = u
		}
		if a, ok := strings.CutPrefix(f, "auth=Bearer "); ok {
			tok = a
		}
	}
	return user, tok
}

func TestDelegatedAccountNeedsLoginUntilSignedIn(t *testing.T) {
	e := newSimEnv(t, config.FlowDeviceCode)
	b := e.broker(t)
	b.Start()
	_, err := e.upstreamToken(t, b, agent)
	le := wantKind(t, err, proxy.KindAccount)
	if le.Reason != reasonNeedsLogin {
		t.Fatalf("reason %q, want %q", le.Reason, reasonNeedsLogin)
	}
	if s := b.AccountStatus(queue); s.State != StateNeedsLogin || s.Identity != agent || !strings.Contains(s.Explanation, "broker login") {
		t.Fatalf("status %+v, want needs-login for %s", s, agent)
	}
	if n := e.entra.TokenRequests(); n != 0 {
		t.Fatalf("%d token requests before anyone signed in, want 0", n)
	}

	// Device code, approved as the administrator would.
	s, err := NewSignIn(e.cfg.Accounts[1])
	if err != nil {
		t.Fatal(err)
	}
	s.now = e.clock.Now
	ctx := context.Background()
	dc, err := s.StartDeviceCode(ctx)
	if err != nil {
		t.Fatalf("StartDeviceCode: %v", err)
	}
	if err := e.entra.ApproveDeviceCode(dc.UserCode, agent); err != nil {
		t.Fatal(err)
	}
	c, err := s.PollDeviceCode(ctx, dc, func(context.Context, time.Duration) error { return nil })
	if err != nil {
		t.Fatalf("PollDeviceCode: %v", err)
	}
	before := e.entra.TokenRequests()
	if _, err := b.SignedIn(ctx, agent, c); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{agent, queue} {
		claims, err := e.upstreamToken(t, b, m)
		if err != nil {
			t.Fatalf("login %s after sign-in: %v", m, err)
		}
		if claims.UPN != agent || !slices.Contains(claims.Scopes, "IMAP.AccessAsUser.All") || !slices.Contains(claims.Scopes, "SMTP.Send") {
			t.Fatalf("%s: token for %q with scopes %v", m, claims.UPN, claims.Scopes)
		}
		if st := b.AccountStatus(m); st.State != StateOK || st.SignedIn.IsZero() || st.RefreshTokenIssued.IsZero() {
			t.Fatalf("status of %s: %+v", m, st)
		}
	}
	if n := e.entra.TokenRequests() - before; n != 0 {
		t.Fatalf("logins after sign-in made %d token requests, want 0 (the sign-in's token serves)", n)
	}
	if strings.Contains(e.logs.String(), c.RefreshToken) || strings.Contains(e.logs.String(), c.AccessToken) {
		t.Fatal("a token is in the log")
	}
}

func TestSignedInAsSomeoneElse(t *testing.T) {
	e := newSimEnv(t, config.FlowPassword)
	b := e.broker(t)
	_, err := b.SignedIn(context.Background(), agent, &Credentials{User: "boss@contoso.example", AccessToken: "x", RefreshToken: "y", ExpiresIn: 3600})
	if err == nil || !strings.Contains(err.Error(), "signs in as "+agent) {
		t.Fatalf("got %v, want a refusal naming %s", err, agent)
	}
	if _, err := b.SignedIn(context.Background(), "nobody@contoso.example", &Credentials{}); err == nil {
		t.Fatal("signed in an unknown account")
	}
}

// sealedRefreshToken opens the stored record of the agent's sign-in.
func (e *simEnv) sealedToken(t *testing.T, b *Broker) *token {
	t.Helper()
	key := signInKey("desk", agent)
	blob := e.store.token(key)
	if blob == nil {
		t.Fatalf("no stored record %q", key)
	}
	tok, err := b.tokens.openToken(&store.Account{Mailbox: key, Token: blob})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestRefreshTokenRotationStoredFirst(t *testing.T) {
	e := newSimEnv(t, config.FlowPassword)
	b := e.broker(t)
	e.signInByPassword(t, b)
	first := e.sealedToken(t, b)
	if first.Password != agentPass || first.RefreshToken == "" {
		t.Fatal("the sign-in's password and refresh token are not sealed in the store")
	}
	if bytes.Contains(e.store.dump(), []byte(agentPass)) || bytes.Contains(e.store.dump(), []byte(first.RefreshToken)) {
		t.Fatal("the password or refresh token is in the store unsealed")
	}

	// The store holds the refresh token back while the new access token
	// waits: logins keep the old one until the newest is stored.
	var passed signal
	b.tokens.onPass = passed.notify
	oldAccess := mustAccessToken(t, b, agent)
	gate := e.store.holdPuts()
	e.clock.Advance(45 * time.Minute) // past refreshAt of a one-hour token
	b.Start()
	waitUntil(t, &e.store.changed, "the refresh to reach the store", func() bool { return e.store.heldPuts() == 1 })
	if got := mustAccessToken(t, b, agent); got != oldAccess {
		t.Fatal("a new access token was used before its refresh token was stored")
	}
	close(gate)
	waitUntil(t, &passed, "the new token", func() bool { return mustAccessToken(t, b, agent) != oldAccess })
	second := e.sealedToken(t, b)
	if second.RefreshToken == first.RefreshToken || second.RefreshIssued.IsZero() {
		t.Fatal("the stored refresh token did not rotate")
	}
	state(b, agent, func(a *signIn) {
		if a.tok.RefreshToken != second.RefreshToken {
			t.Error("the refresh token in use is not the stored one")
		}
	})
	// A restarted broker redeems the newest.
	b.Close()
	b2 := e.broker(t)
	e.clock.Advance(45 * time.Minute)
	b2.Start()
	waitUntil(t, &e.store.changed, "the restarted broker's refresh", func() bool {
		return e.sealedToken(t, b2).RefreshToken != second.RefreshToken
	})
	if n := e.entra.RefreshTokenReuse(); n != 0 {
		t.Fatalf("the simulator saw %d redemptions of an already used refresh token", n)
	}
}

func mustAccessToken(t *testing.T, b *Broker, mailbox string) string {
	t.Helper()
	it, err := b.AccessToken(context.Background(), mailbox, "")
	if err != nil {
		t.Fatalf("AccessToken(%s): %v", mailbox, err)
	}
	return it.AccessToken
}

func TestRevokedSignInNeedsLoginThenRecovers(t *testing.T) {
	e := newSimEnv(t, config.FlowDeviceCode)
	// A second, app-only account keeps working throughout.
	secretApp := *e.app
	secretApp.Name, secretApp.ClientSecret = "app", "app-secret-value"
	e.entra.AddApp(m365sim.App{Tenant: simTenant, ClientID: "33333333-3333-4444-5555-666666666666", Secret: "app-secret-value",
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{"scanner@contoso.example"}})
	secretApp.ClientID = "33333333-3333-4444-5555-666666666666"
	e.cfg.Apps = append(e.cfg.Apps, &secretApp)
	e.cfg.Accounts = append(e.cfg.Accounts, &config.Account{Mailbox: "scanner@contoso.example", Login: "scanner@contoso.example",
		App: &secretApp, Flow: config.FlowClientCredentials, Scopes: config.DefaultScopes(config.FlowClientCredentials, secretApp.Cloud)})
	b := e.broker(t)
	e.signInByPassword(t, b) // the password grant stands in for the device code here
	var passed signal
	b.tokens.onPass = passed.notify
	b.Start()
	if err := e.entra.RevokeSessions(simTenant, agent); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(61 * time.Minute) // the access token has expired
	b.tokens.kick()                   // the refresher's timer runs on real time
	waitUntil(t, &passed, "needs-login", func() bool { return b.AccountStatus(queue).State == StateNeedsLogin })
	st := b.AccountStatus(agent)
	if !strings.Contains(st.Explanation, "AADSTS50173") || !strings.Contains(st.Explanation, "broker login") {
		t.Fatalf("explanation %q, want AADSTS50173 and broker login", st.Explanation)
	}
	_, err := e.upstreamToken(t, b, queue)
	if le := wantKind(t, err, proxy.KindAccount); le.Reason != reasonNeedsLogin {
		t.Fatalf("reason %q", le.Reason)
	}
	if _, err := e.upstreamToken(t, b, "scanner@contoso.example"); err != nil {
		t.Fatalf("the app-only account stopped: %v", err)
	}
	if !strings.Contains(e.logs.String(), "broker login "+agent) && !strings.Contains(e.logs.String(), "broker login "+queue) {
		t.Fatalf("the log does not say which broker login fixes it:\n%s", e.logs.String())
	}
	requests := e.entra.TokenRequests()
	e.clock.Advance(time.Hour)
	b.tokens.kick()
	waitUntil(t, &passed, "a refresher pass", func() bool { return true })
	if n := e.entra.TokenRequests() - requests; n > 1 {
		t.Fatalf("%d token requests for a sign-in that needs login", n)
	}
	e.signInByPassword(t, b)
	if _, err := e.upstreamToken(t, b, queue); err != nil {
		t.Fatalf("after broker login: %v", err)
	}
}

func TestPasswordFlowSignsInAgainWithSealedPassword(t *testing.T) {
	e := newSimEnv(t, config.FlowPassword)
	b := e.broker(t)
	e.signInByPassword(t, b)
	var passed signal
	b.tokens.onPass = passed.notify
	b.Start()
	if err := e.entra.RevokeSessions(simTenant, agent); err != nil {
		t.Fatal(err)
	}
	signedIn := b.AccountStatus(agent).SignedIn
	e.clock.Advance(61 * time.Minute)
	b.tokens.kick() // the refresher's timer runs on real time
	waitUntil(t, &passed, "a new sign-in with the sealed password", func() bool {
		s := b.AccountStatus(agent)
		return s.State == StateOK && s.SignedIn.After(signedIn)
	})
	if _, err := e.upstreamToken(t, b, agent); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains([]byte(e.logs.String()), []byte(agentPass)) {
		t.Fatal("the password is in the log")
	}
}

func TestGraphTokenFromTheSameSignIn(t *testing.T) {
	e := newSimEnv(t, config.FlowPassword)
	b := e.broker(t)
	e.signInByPassword(t, b)
	ctx := context.Background()
	before := e.entra.TokenRequests()
	it, err := b.AccessToken(ctx, agent, e.app.Cloud.GraphScope())
	if err != nil {
		t.Fatal(err)
	}
	claims, err := e.entra.ValidateToken(it.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if claims.Audience != "https://graph.microsoft.com" || claims.UPN != agent {
		t.Fatalf("Graph token for %q with audience %q", claims.UPN, claims.Audience)
	}
	again, err := b.AccessToken(ctx, agent, e.app.Cloud.GraphScope())
	if err != nil || again.AccessToken != it.AccessToken {
		t.Fatalf("second Graph token: %v, cached %v", err, err == nil && again.AccessToken == it.AccessToken)
	}
	if n := e.entra.TokenRequests() - before; n != 1 {
		t.Fatalf("%d token requests for two Graph tokens, want 1", n)
	}
	// The redemption rotated the refresh token; the store has the newest.
	state(b, agent, func(a *signIn) {
		if sealed := e.sealedToken(t, b); sealed.RefreshToken != a.tok.RefreshToken {
			t.Error("the rotated refresh token is not the stored one")
		}
	})
	if !strings.Contains(e.logs.String(), "access token issued to a local tool") {
		t.Fatal("the issue is not logged")
	}
}

func TestLogoutForgetsTheSignIn(t *testing.T) {
	e := newSimEnv(t, config.FlowPassword)
	b := e.broker(t)
	e.signInByPassword(t, b)
	got, err := b.Logout(context.Background(), agent)
	if err != nil || len(got) != 2 {
		t.Fatalf("Logout: %v %v", got, err)
	}
	if e.store.token(signInKey("desk", agent)) != nil {
		t.Fatal("the sealed sign-in is still stored")
	}
	if s := b.AccountStatus(queue); s.State != StateNeedsLogin {
		t.Fatalf("state %s after logout", s.State)
	}
}

func TestClientAssertion(t *testing.T) {
	certPEM, keyPEM, cert, err := m365sim.NewClientCertificate("broker", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = certPEM
	cc := &clientCredential{cert: cert, key: parsed.(crypto.Signer)}
	aud := "https://login.example/contoso/oauth2/v2.0/token"
	now := time.Now()
	jwt, err := clientAssertion(simClientID, cc, aud, now)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(jwt, ".")
	var header map[string]string
	var claims map[string]any
	decodeJSONPart(t, parts[0], &header)
	decodeJSONPart(t, parts[1], &claims)
	thumb := sha256.Sum256(cert.Raw)
	if header["alg"] != "PS256" || header["x5t#S256"] != base64.RawURLEncoding.EncodeToString(thumb[:]) {
		t.Fatalf("header %v", header)
	}
	if claims["aud"] != aud || claims["iss"] != simClientID || claims["sub"] != simClientID || claims["jti"] == "" ||
		claims["exp"].(float64) != float64(now.Add(assertionLifetime).Unix()) {
		t.Fatalf("claims %v", claims)
	}
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPSS(cert.PublicKey.(*rsa.PublicKey), crypto.SHA256, digest[:], sig, nil); err != nil {
		t.Fatalf("signature: %v", err)
	}
	second, _ := clientAssertion(simClientID, cc, aud, now)
	if second == jwt {
		t.Fatal("two assertions are equal: jti is not fresh")
	}
}

func decodeJSONPart(t *testing.T, part string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func TestCredentialExpiryWarnings(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	list := credentials(true, now.Add(10*24*time.Hour), nil, true, now.Add(-time.Hour), now)
	if len(list) != 2 || !strings.Contains(list[0].Warning, "expires on 2026-12-10 (in 10 days)") ||
		!strings.Contains(list[1].Warning, "expired on") {
		t.Fatalf("got %+v", list)
	}
	if far := credentials(true, now.Add(60*24*time.Hour), nil, false, time.Time{}, now); far[0].Warning != "" {
		t.Fatalf("a secret expiring in 60 days warns: %q", far[0].Warning)
	}
	s := Status{State: StateOK, Credentials: list}
	if critical, warning := s.Attention(); critical || !warning {
		t.Fatalf("Attention() = %v, %v", critical, warning)
	}
}

func TestDeviceCodeDeclinedAndExpired(t *testing.T) {
	e := newSimEnv(t, config.FlowDeviceCode)
	s, err := NewSignIn(e.cfg.Accounts[0])
	if err != nil {
		t.Fatal(err)
	}
	s.now = e.clock.Now
	ctx := context.Background()
	dc, err := s.StartDeviceCode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.entra.DeclineDeviceCode(dc.UserCode); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PollDeviceCode(ctx, dc, func(context.Context, time.Duration) error { return nil }); err == nil || !strings.Contains(err.Error(), "declined") {
		t.Fatalf("declined: got %v", err)
	}
	dc, err = s.StartDeviceCode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	polls := 0
	_, err = s.PollDeviceCode(ctx, dc, func(_ context.Context, d time.Duration) error {
		polls++
		e.clock.Advance(d)
		return nil
	})
	if !errors.Is(err, errDeviceCodeExpired) || polls < 2 {
		t.Fatalf("unanswered: got %v after %d polls", err, polls)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.PollDeviceCode(cctx, dc, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: got %v", err)
	}
}
