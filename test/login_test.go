package test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	deviceCodeRE    = regexp.MustCompile(`open this page on any device:\s+(\S+)\s+and enter the code\s+(\S+)`)
	pasteURLRE      = regexp.MustCompile(`open this address in a browser on any machine:\s+(\S+)`)
	loopbackURLRE   = regexp.MustCompile(`open this address in a browser on this machine:\s+(\S+)`)
	loopbackWaitRE  = regexp.MustCompile(`broker waits for the browser on (\S+)`)
	addressPromptRE = regexp.MustCompile(`Address: `)
)

// signedInRE matches what broker login prints at the end of a sign-in.
var signedInRE = regexp.MustCompile(`Signed in as (\S+); accounts now served: ([^\n]*)\n`)

// checkSignedIn waits for broker login to exit 0 having printed who signed
// in and which accounts that serves (in any order).
func checkSignedIn(t *testing.T, c *cli, user string, accounts ...string) {
	t.Helper()
	if code := c.wait(t); code != 0 {
		t.Fatalf("broker login exited %d, want 0\n%s", code, c.output())
	}
	m := c.expect(t, c.out, signedInRE)
	served := strings.Split(m[2], ", ")
	slices.Sort(served)
	accounts = slices.Sorted(slices.Values(accounts))
	if m[1] != user || !slices.Equal(served, accounts) {
		t.Fatalf("broker login printed %q, want signed in as %s serving %v\n%s", m[0], user, accounts, c.output())
	}
}

// checkServing fails unless status reports mailbox's sign-in healthy, by
// user with flow.
func (env *loginEnv) checkServing(t *testing.T, mailbox, flow, user string) accountStatus {
	t.Helper()
	st, code := env.status(t, mailbox)
	// A token with less than 5 minutes left is due for a refresh: with the
	// short lifetimes of some tests, that is state refreshing.
	shortLived := st.State == "refreshing" && !st.AccessTokenExpires.IsZero() && time.Until(st.AccessTokenExpires) < 5*time.Minute
	if code != 0 || (st.State != "ok" && !shortLived) || st.Flow != flow || st.Identity != user || st.SignedIn.IsZero() || !st.LastRefreshOK {
		t.Fatalf("broker status %s after broker login: got %+v (exit %d), want state ok, flow %s, identity %s, signed in (exit 0)\n%s",
			mailbox, st, code, flow, user, env.Daemon.Log())
	}
	return st
}

// redirectCode records the authorization code of a redirect address as a
// secret and returns the address.
func (env *loginEnv) redirectCode(t *testing.T, redirect string) string {
	t.Helper()
	u, err := url.Parse(redirect)
	if err != nil || u.Query().Get("code") == "" {
		t.Fatalf("Entra sent the browser to %q: want an address with a code", redirect)
	}
	env.secret(u.Query().Get("code"), "authorization code")
	return redirect
}

// TestLoginDeviceCodeWhileServing is the e-mail app's set-up (001–003)
// with a public client: the daemon runs with a delegated account nobody
// signed in yet, which its clients are told; the administrator runs broker
// login, approves the code on "another device", and from then on, without
// a restart, IMAP through broker opens the user's mailbox at the real
// Dovecot (which checks the token's upn against the mailbox) and a message
// sent through broker to the real Postfix is delivered.
func TestLoginDeviceCodeWhileServing(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps:     []loginApp{{Name: "mailapp", ClientID: publicClientID, PublicClientFlows: true}},
		Accounts: []loginAccount{{Mailbox: agent, App: "mailapp", Flow: "device_code"}},
		Users:    map[string]string{agent: "Agent-Passw0rd-device"},
	})

	env.checkNeedsLoginIMAP(t, agent)
	env.checkNeedsLoginSMTP(t, agent)
	st, code := env.status(t, agent)
	if code != 4 || st.State != "needs-login" || !strings.Contains(st.Explanation, "broker login") {
		t.Fatalf("broker status before broker login: got %+v (exit %d), want needs-login naming broker login (exit 4)", st, code)
	}

	c := env.startLogin(t, agent)
	m := c.expect(t, c.out, deviceCodeRE)
	if m[1] != env.Entra.URL()+"/devicelogin" {
		t.Fatalf("broker login shows the page %q, want the simulator's %s/devicelogin", m[1], env.Entra.URL())
	}
	ctx, cancel := context.WithTimeout(context.Background(), loginWait)
	defer cancel()
	pending, err := env.Entra.WaitDeviceCode(ctx)
	if err != nil || pending != m[2] {
		t.Fatalf("Entra's pending user code is %q (%v); broker login shows %q", pending, err, m[2])
	}
	if err := env.Entra.ApproveDeviceCode(m[2], agent); err != nil {
		t.Fatal(err)
	}
	checkSignedIn(t, c, agent, agent)
	env.Daemon.waitLog("msg=\"signed in\"")

	env.imapLogin(t, agent)
	env.sendAndReadBack(t, agent)
	env.checkServing(t, agent, "device_code", agent)
	env.checkSecrets(t)
}

// TestLoginAuthCodePaste is the contact center's set-up (000): a
// confidential web app with a client secret, the authorization code flow
// in paste mode (the default without a display). The administrator first
// pastes the address an earlier, abandoned sign-in ended on: broker login
// says it belongs to another sign-in and asks again; the right address
// signs the queue's user in. An address with Entra's error= (consent
// declined) is explained, and may be followed by the right one too.
func TestLoginAuthCodePaste(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps: []loginApp{{Name: "contactcenter", ClientID: webClientID, Secret: "Qx7~web.app-secret_value.0123456789",
			RedirectURIs: []string{"http://localhost"}}},
		Accounts: []loginAccount{{Mailbox: agent, App: "contactcenter", Flow: "auth_code"}},
		Users:    map[string]string{agent: "Agent-Passw0rd-paste"},
	})
	env.checkNeedsLoginIMAP(t, agent)

	// A sign-in the administrator abandoned after the browser came back.
	earlier := env.startLogin(t, agent)
	earlierURL := earlier.expect(t, earlier.out, pasteURLRE)[1]
	earlierRedirect, err := env.Entra.Authorize(earlierURL, agent)
	if err != nil {
		t.Fatal(err)
	}
	env.redirectCode(t, earlierRedirect)
	earlier.stdin.Close()
	if code := earlier.wait(t); code != 1 {
		t.Fatalf("broker login whose standard input ended: exit %d, want 1\n%s", code, earlier.output())
	}

	c := env.startLogin(t, agent)
	authURL := c.expect(t, c.out, pasteURLRE)[1]
	if !strings.HasPrefix(authURL, env.Entra.URL()+"/"+tenant+"/oauth2/v2.0/authorize?") {
		t.Fatalf("broker login prints %q, want the tenant's authorize endpoint at the simulator", authURL)
	}
	q, _ := url.ParseQuery(authURL[strings.Index(authURL, "?")+1:])
	if q.Get("code_challenge_method") != "S256" || q.Get("redirect_uri") != "http://localhost" || q.Get("state") == "" {
		t.Fatalf("authorize URL %s: want PKCE S256, state and redirect_uri http://localhost", authURL)
	}
	c.expect(t, c.errOut, addressPromptRE)
	c.send(t, earlierRedirect)
	c.expect(t, c.errOut, regexp.MustCompile(`another sign-in[^\n]*\nPaste it again \(2 more tries\)`))
	// The user declined consent in the browser: Entra's error= address.
	denied, err := env.Entra.AuthorizeDeny(authURL)
	if err != nil {
		t.Fatal(err)
	}
	c.send(t, denied)
	c.expect(t, c.errOut, regexp.MustCompile(`AADSTS65004: The user declined to consent[^\n]*\nPaste it again \(1 more tries\)`))
	redirect, err := env.Entra.Authorize(authURL, agent)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(redirect, "http://localhost/?") && !strings.HasPrefix(redirect, "http://localhost?") {
		t.Fatalf("Entra sends the browser to %q, want http://localhost/?code=…", redirect)
	}
	c.send(t, env.redirectCode(t, redirect))
	checkSignedIn(t, c, agent, agent)

	env.imapLogin(t, agent)
	env.sendAndReadBack(t, agent)
	st := env.checkServing(t, agent, "auth_code", agent)
	if len(st.Credentials) != 1 || st.Credentials[0].Kind != "client_secret" {
		t.Fatalf("status credentials: got %+v, want the client secret", st.Credentials)
	}
	if tok := env.token(t, agent, ""); jwtClaim(t, tok, "appidacr") != "1" {
		t.Fatalf("the account's token has appidacr %v, want 1: the app authenticated with its secret", jwtClaim(t, tok, "appidacr"))
	}
	env.checkSecrets(t)
}

// TestLoginAuthCodeLoopback: a public client (Mobile and desktop
// redirect URI http://localhost) in loopback mode; the test's HTTP client
// is the browser that Entra sends back to broker login's listener.
func TestLoginAuthCodeLoopback(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps:     []loginApp{{Name: "desktop", ClientID: publicClientID, RedirectURIs: []string{"http://localhost"}}},
		Accounts: []loginAccount{{Mailbox: agent, App: "desktop", Flow: "auth_code"}},
		Users:    map[string]string{agent: "Agent-Passw0rd-loopback"},
	})

	c := env.startLogin(t, "-loopback", "-port", "0", agent)
	authURL := c.expect(t, c.out, loopbackURLRE)[1]
	listener := c.expect(t, c.out, loopbackWaitRE)[1]
	if !regexp.MustCompile(`^http://localhost:[1-9][0-9]*$`).MatchString(listener) {
		t.Fatalf("broker login waits on %q, want http://localhost:PORT", listener)
	}
	redirect, err := env.Entra.Authorize(authURL, agent)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(redirect, listener+"/?") && !strings.HasPrefix(redirect, listener+"?") {
		t.Fatalf("Entra sends the browser to %q, want %s/?code=…", redirect, listener)
	}
	env.redirectCode(t, redirect)
	// The browser: localhost may resolve to ::1 or 127.0.0.1; broker
	// listens on both when it can, surely on 127.0.0.1.
	u, _ := url.Parse(redirect)
	u.Host = "127.0.0.1:" + u.Port()
	if u.Path == "" {
		u.Path = "/" // what a browser asks for
	}
	client := &http.Client{Timeout: loginWait}
	resp, err := client.Get(u.String())
	if err != nil {
		t.Fatalf("browser at %s: %v\n%s", u.Redacted(), err, c.output())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Signed in") {
		t.Fatalf("browser got %s:\n%s\nwant 200 and a page saying signed in\n%s", resp.Status, body, c.output())
	}
	checkSignedIn(t, c, agent, agent)
	// The listener is gone with broker login.
	if resp, err := client.Get(u.String()); err == nil {
		resp.Body.Close()
		t.Fatalf("broker login's listener still answers after it exited: %s", resp.Status)
	}

	env.imapLogin(t, agent)
	env.sendAndReadBack(t, agent)
	env.checkServing(t, agent, "auth_code", agent)
	if tok := env.token(t, agent, ""); jwtClaim(t, tok, "appidacr") != "0" {
		t.Fatalf("the account's token has appidacr %v, want 0: a public client", jwtClaim(t, tok, "appidacr"))
	}
	env.checkSecrets(t)
}

// TestLoginSharedMailboxCertificate: a delegate and a shared mailbox with
// the same app and login_user share one sign-in, made once with broker
// login of the shared mailbox, by the authorization code flow of a
// confidential app authenticating with a certificate (the simulated Entra
// checks the client assertion against the registered certificate). Dovecot
// lets the delegate's token open the shared mailbox; Postfix lets it send
// as it.
func TestLoginSharedMailboxCertificate(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps: []loginApp{{Name: "contactcenter", ClientID: certClientID, Certificate: true,
			RedirectURIs: []string{"http://localhost"}}},
		Accounts: []loginAccount{
			{Mailbox: agent, App: "contactcenter", Flow: "auth_code"},
			{Mailbox: queue, App: "contactcenter", Flow: "auth_code", LoginUser: agent},
		},
		Users:     map[string]string{agent: "Agent-Passw0rd-shared"},
		Delegates: map[string][]string{queue: {agent}},
	})
	env.checkNeedsLoginIMAP(t, queue)
	env.checkNeedsLoginIMAP(t, agent)

	c := env.startLogin(t, "-paste", queue)
	authURL := c.expect(t, c.out, pasteURLRE)[1]
	if !strings.Contains(c.out.String(), queue+" (signed in by "+agent+")") {
		t.Fatalf("broker login of the shared mailbox does not say who signs in for it\n%s", c.output())
	}
	// No upn: Entra's sign-in page takes the login_hint broker sent.
	redirect, err := env.Entra.Authorize(authURL, "")
	if err != nil {
		t.Fatal(err)
	}
	c.expect(t, c.errOut, addressPromptRE)
	c.send(t, env.redirectCode(t, redirect))
	checkSignedIn(t, c, agent, agent, queue)

	env.imapLogin(t, queue)
	env.imapLogin(t, agent)
	env.sendAndReadBack(t, queue)
	for _, m := range []string{agent, queue} {
		st := env.checkServing(t, m, "auth_code", agent)
		if len(st.Credentials) != 1 || st.Credentials[0].Kind != "certificate" || st.Credentials[0].Expires.Before(time.Now().Add(300*24*time.Hour)) {
			t.Fatalf("status %s credentials: got %+v, want the certificate with its NotAfter", m, st.Credentials)
		}
	}
	tok := env.token(t, queue, "")
	if jwtClaim(t, tok, "appidacr") != "2" || jwtClaim(t, tok, "upn") != agent {
		t.Fatalf("the shared mailbox's token: appidacr %v, upn %v; want 2 (certificate) and the delegate %s",
			jwtClaim(t, tok, "appidacr"), jwtClaim(t, tok, "upn"), agent)
	}
	if other := env.token(t, agent, ""); other != tok {
		t.Fatalf("broker token gives the delegate and the shared mailbox different tokens: want one sign-in")
	}
	env.checkSecrets(t)
}

// TestClientCredentialsCertificate: an app-only account whose app has a
// certificate instead of a secret; the simulated Entra checks each client
// assertion against the registered certificate. broker login checks that
// broker gets a token; IMAP and SMTP work through broker.
func TestClientCredentialsCertificate(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps: []loginApp{{Name: "scanners", ClientID: appOnlyClientID, Certificate: true,
			Roles: smtpRoles, Mailboxes: []string{scanner}}},
		Accounts: []loginAccount{{Mailbox: scanner, App: "scanners", Flow: "client_credentials"}},
	})
	env.imapLogin(t, scanner)
	env.sendAndReadBack(t, scanner)

	c := env.startLogin(t, scanner)
	if code := c.wait(t); code != 0 {
		t.Fatalf("broker login of an app-only account: exit %d\n%s", code, c.output())
	}
	c.expect(t, c.out, regexp.MustCompile(`nobody signs in[^\n]*\nChecked: broker got a token`))

	st, code := env.status(t, scanner)
	if code != 0 || st.State != "ok" || st.Identity != "app:"+appOnlyClientID ||
		len(st.Credentials) != 1 || st.Credentials[0].Kind != "certificate" || st.Credentials[0].Expires.IsZero() {
		t.Fatalf("broker status: got %+v (exit %d), want ok, app-only, the certificate with its expiry", st, code)
	}
	tok := env.token(t, scanner, "")
	claims, err := env.Entra.ValidateToken(tok)
	if err != nil || claims.IDType != "app" || jwtClaim(t, tok, "appidacr") != "2" {
		t.Fatalf("the account's token: %+v, appidacr %v (%v); want an app token from a certificate (appidacr 2)", claims, jwtClaim(t, tok, "appidacr"), err)
	}
	env.checkSecrets(t)
}

// TestBrokerTokenAndLogout: broker token hands a local tool a Microsoft
// Graph token redeemed from the account's sign-in, through the daemon,
// which logs the issue without the token; broker logout then forgets the
// sign-in and the account waits for broker login again.
func TestBrokerTokenAndLogout(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps: []loginApp{{Name: "mailapp", ClientID: webClientID, Secret: "Qx7~token.test-secret_0123456789",
			RedirectURIs: []string{"http://localhost"}}},
		Accounts: []loginAccount{{Mailbox: agent, App: "mailapp", Flow: "auth_code"}},
		Users:    map[string]string{agent: "Agent-Passw0rd-token"},
	})
	env.pasteLogin(t, agent, agent, agent)

	graph := env.token(t, agent, "graph")
	claims, err := env.Entra.ValidateToken(graph)
	if err != nil || claims.Audience != "https://graph.microsoft.com" || claims.UPN != agent {
		t.Fatalf("broker token -scope graph: claims %+v (%v); want a Graph token of %s", claims, err, agent)
	}
	line := env.Daemon.waitLog("access token issued")
	if !strings.Contains(line, "account="+agent) || !strings.Contains(line, "graph.microsoft.com") {
		t.Fatalf("daemon logged %q: want the account and the Graph scope", line)
	}
	outlook := env.token(t, agent, "outlook")
	if claims, err := env.Entra.ValidateToken(outlook); err != nil || claims.Audience != "https://outlook.office.com" {
		t.Fatalf("broker token -scope outlook: claims %+v (%v); want an Outlook token", claims, err)
	}
	// Still the account's sign-in after the Graph redemption rotated it.
	env.imapLogin(t, agent)

	out, errOut, err := runBroker("logout", "-config", env.Daemon.config, agent)
	if err != nil {
		t.Fatalf("broker logout: %v\n%s", err, errOut)
	}
	env.outputs = append(env.outputs, out, errOut)
	st, code := env.status(t, agent)
	if code != 4 || st.State != "needs-login" {
		t.Fatalf("broker status after broker logout: %+v (exit %d), want needs-login (exit 4)", st, code)
	}
	env.checkNeedsLoginIMAP(t, agent)
	if _, _, err := runBroker("token", "-config", env.Daemon.config, "-scope", "graph", agent); exitCode(err) != 1 {
		t.Fatalf("broker token after logout: %v, want exit 1", err)
	}
	env.checkSecrets(t)
}

// pasteLogin signs user in for mailbox's auth_code account in paste mode
// and checks broker login's report.
func (env *loginEnv) pasteLogin(t *testing.T, mailbox, user string, accounts ...string) {
	t.Helper()
	c := env.startLogin(t, "-paste", mailbox)
	authURL := c.expect(t, c.out, pasteURLRE)[1]
	redirect, err := env.Entra.Authorize(authURL, user)
	if err != nil {
		t.Fatal(err)
	}
	c.expect(t, c.errOut, addressPromptRE)
	c.send(t, env.redirectCode(t, redirect))
	checkSignedIn(t, c, user, accounts...)
}

// TestLoginDeviceCodeRefusals: a device code sign-in cancelled with Ctrl-C
// exits 130; one declined at the verification page, and one of an app
// whose "Allow public client flows" is off (AADSTS7000218), end with a
// message saying so, and the account still needs a login.
func TestLoginDeviceCodeRefusals(t *testing.T) {
	t.Parallel()
	const other = "other@contoso.com"
	env := newLoginEnv(t, loginEnvOptions{
		Apps: []loginApp{
			{Name: "mailapp", ClientID: publicClientID, PublicClientFlows: true},
			{Name: "nopublic", ClientID: webClientID},
		},
		Accounts: []loginAccount{
			{Mailbox: agent, App: "mailapp", Flow: "device_code"},
			{Mailbox: other, App: "nopublic", Flow: "device_code"},
		},
		Users: map[string]string{agent: "Agent-Passw0rd-refusals", other: "Other-Passw0rd-refusals"},
	})

	c := env.startLogin(t, agent)
	c.expect(t, c.out, deviceCodeRE)
	if err := c.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := c.wait(t); code != 130 {
		t.Fatalf("broker login after Ctrl-C: exit %d, want 130\n%s", code, c.output())
	}
	c.expect(t, c.errOut, regexp.MustCompile(`cancelled`))

	// Both wait for their first poll, 5 s (the simulator's interval).
	declined := env.startLogin(t, agent)
	code := declined.expect(t, declined.out, deviceCodeRE)[2]
	if err := env.Entra.DeclineDeviceCode(code); err != nil {
		t.Fatal(err)
	}
	noPublic := env.startLogin(t, other)
	code = noPublic.expect(t, noPublic.out, deviceCodeRE)[2]
	if err := env.Entra.ApproveDeviceCode(code, other); err != nil {
		t.Fatal(err)
	}
	if code := declined.wait(t); code != 1 {
		t.Fatalf("broker login declined at the verification page: exit %d, want 1\n%s", code, declined.output())
	}
	declined.expect(t, declined.errOut, regexp.MustCompile(`declined at the verification page; run broker login again`))
	if code := noPublic.wait(t); code != 1 {
		t.Fatalf("broker login with public client flows off: exit %d, want 1\n%s", code, noPublic.output())
	}
	noPublic.expect(t, noPublic.errOut, regexp.MustCompile(`7000218[^\n]*Allow public client flows`))
	for _, m := range []string{agent, other} {
		if st, code := env.status(t, m); code != 4 || st.State != "needs-login" {
			t.Fatalf("broker status %s after failed sign-ins: %+v (exit %d), want needs-login", m, st, code)
		}
		env.checkNeedsLoginIMAP(t, m)
	}
	env.checkSecrets(t)
}

// TestLoginWithoutDaemon: with the daemon stopped, broker status and broker
// login open the store themselves; the daemon started afterwards serves
// the sign-in, and refreshes it.
func TestLoginWithoutDaemon(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps:     []loginApp{{Name: "desktop", ClientID: publicClientID, RedirectURIs: []string{"http://localhost"}}},
		Accounts: []loginAccount{{Mailbox: agent, App: "desktop", Flow: "auth_code"}},
		Users:    map[string]string{agent: "Agent-Passw0rd-offline"},
	})
	env.Daemon.stop()
	env.Entra.SetTokenLifetime(6 * time.Second) // so that the daemon refreshes soon
	if st, code := env.status(t, agent); code != 4 || st.State != "needs-login" {
		t.Fatalf("broker status without a daemon, before broker login: %+v (exit %d), want needs-login (exit 4)", st, code)
	}
	env.pasteLogin(t, agent, agent, agent)
	if st, _ := env.status(t, agent); st.State == "needs-login" || st.SignedIn.IsZero() || st.Identity != agent {
		t.Fatalf("broker status without a daemon, after broker login: %+v, want %s signed in", st, agent)
	}
	env.Daemon = startDaemon(t, env.Dir, env.Config)
	env.imapLogin(t, agent)
	env.sendAndReadBack(t, agent)
	env.Daemon.waitLogCountUnless(tokenRefreshed, 1, "account needs sign-in")
	env.checkServing(t, agent, "auth_code", agent)
	env.checkSecrets(t)
}
