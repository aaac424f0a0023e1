package test

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

var passwordWarningRE = regexp.MustCompile(`(?s)warning: the password flow \(ROPC\) cannot satisfy multi-factor authentication,\s+and Microsoft is retiring it`)

// TestLoginPassword is the presence connector's set-up (004): a dedicated
// user signing in with its password (ROPC) through an app with a client
// secret. broker login warns about the flow and reads the password from
// standard input (not a terminal). An MFA-required user cannot sign in
// this way, and is told why. While the daemon runs: a revoked refresh
// token is replaced by signing in again with the sealed password, without
// anyone noticing; a password change (which revokes the sign-in and makes
// the sealed password wrong) puts the account in needs-login and its
// clients are told; broker login with the new password restores it without
// a restart.
func TestLoginPassword(t *testing.T) {
	t.Parallel()
	const oldPassword, newPassword = "Presence-0ld-Passw0rd!", "Presence-N3w-Passw0rd!"
	// Short-lived tokens, so that the daemon's refresher redeems the
	// refresh token every few seconds.
	env := newLoginEnv(t, loginEnvOptions{
		Apps:          []loginApp{{Name: "presence", ClientID: webClientID, Secret: "Qx7~presence.secret_0123456789ab"}},
		Accounts:      []loginAccount{{Mailbox: presence, App: "presence", Flow: "password"}},
		Users:         map[string]string{presence: oldPassword},
		TokenLifetime: 10 * time.Second,
	})
	env.secret(newPassword, "new password of "+presence)
	setUser := func(update func(*m365sim.User)) {
		t.Helper()
		if err := env.Entra.UpdateUser(tenant, presence, update); err != nil {
			t.Fatal(err)
		}
	}

	// MFA required by Conditional Access: the password flow cannot do it.
	setUser(func(u *m365sim.User) { u.MFARequired = true })
	c := env.startLogin(t, presence)
	c.expect(t, c.errOut, passwordWarningRE)
	c.send(t, oldPassword)
	if code := c.wait(t); code != 1 {
		t.Fatalf("broker login of an MFA-required user: exit %d, want 1\n%s", code, c.output())
	}
	c.expect(t, c.errOut, regexp.MustCompile(`50076.*(?i)multi-factor authentication is required`))
	if st, code := env.status(t, presence); code != 4 || st.State != "needs-login" {
		t.Fatalf("broker status after a failed sign-in: %+v (exit %d), want needs-login (exit 4)", st, code)
	}
	setUser(func(u *m365sim.User) { u.MFARequired = false })

	c = env.startLogin(t, presence)
	c.expect(t, c.errOut, passwordWarningRE)
	c.send(t, oldPassword)
	checkSignedIn(t, c, presence, presence)
	env.imapLogin(t, presence)
	env.sendAndReadBack(t, presence)
	first := env.checkServing(t, presence, "password", presence)
	if !hasCredential(first, "password") || !hasCredential(first, "client_secret") {
		t.Fatalf("status credentials %+v: want the client secret and the sealed password", first.Credentials)
	}

	// Sessions revoked, the password unchanged: the daemon's next refresh
	// fails and it signs in again with the sealed password by itself.
	if err := env.Entra.RevokeSessions(tenant, presence); err != nil {
		t.Fatal(err)
	}
	again := env.waitStatus(t, presence, "signed in again with the sealed password", func(st accountStatus, _ int) bool {
		return st.SignedIn.After(first.SignedIn) && st.LastRefreshOK
	})
	if again.State == "needs-login" || strings.Contains(env.Daemon.Log(), "account needs sign-in") {
		t.Fatalf("a revoked refresh token with a valid sealed password: status %+v; want no needs-login\n%s", again, env.Daemon.Log())
	}
	// The new sign-in's refresh token is the one in use from now on.
	n := env.Daemon.countLog(`msg="token refreshed"`)
	env.Daemon.waitLogCount(`msg="token refreshed"`, n+1)
	env.imapLogin(t, presence)
	env.checkServing(t, presence, "password", presence)

	// The user's password changes: Entra revokes the refresh token, and the
	// sealed password is the old one.
	setUser(func(u *m365sim.User) { u.Password = newPassword })
	st := env.waitStatus(t, presence, "needs-login", func(st accountStatus, code int) bool {
		return st.State == "needs-login" && code == 4
	})
	if !strings.Contains(st.Explanation, "broker login") || !strings.Contains(st.Explanation, "password") {
		t.Fatalf("status explanation %q: want the password and broker login named", st.Explanation)
	}
	env.Daemon.waitLog("account needs sign-in: run `broker login " + presence + "`")
	env.waitStatus(t, presence, "without a valid access token", func(st accountStatus, _ int) bool {
		return st.AccessTokenExpires.IsZero()
	})
	env.checkNeedsLoginIMAP(t, presence)
	env.checkNeedsLoginSMTP(t, presence)

	// broker login with the new password, the daemon still running.
	env.Entra.SetTokenLifetime(0)
	c = env.startLogin(t, presence)
	c.send(t, newPassword)
	checkSignedIn(t, c, presence, presence)
	env.imapLogin(t, presence)
	env.sendAndReadBack(t, presence)
	env.checkServing(t, presence, "password", presence)

	// The connector's Graph token.
	graph := env.token(t, presence, "graph")
	if claims, err := env.Entra.ValidateToken(graph); err != nil || claims.Audience != "https://graph.microsoft.com" || claims.UPN != presence {
		t.Fatalf("broker token -scope graph: %+v (%v), want a Graph token of %s", claims, err, presence)
	}
	env.checkSecrets(t)
}

// TestTokenGraphAfterRevocation: the presence connector asks for its Graph
// token after the user's sessions were revoked. broker redeems the
// refresh token, which fails, and signs in again with the sealed password;
// what broker token hands out must still be a Graph token.
func TestTokenGraphAfterRevocation(t *testing.T) {
	t.Parallel()
	const password = "Presence-Passw0rd-graph!"
	env := newLoginEnv(t, loginEnvOptions{
		Apps:     []loginApp{{Name: "presence", ClientID: publicClientID, PublicClientFlows: true}},
		Accounts: []loginAccount{{Mailbox: presence, App: "presence", Flow: "password"}},
		Users:    map[string]string{presence: password},
	})
	c := env.startLogin(t, presence)
	c.send(t, password)
	checkSignedIn(t, c, presence, presence)

	if err := env.Entra.RevokeSessions(tenant, presence); err != nil {
		t.Fatal(err)
	}
	graph := env.token(t, presence, "graph")
	claims, err := env.Entra.ValidateToken(graph)
	if err != nil {
		t.Fatalf("broker token -scope graph after the refresh token was revoked: %v", err)
	}
	if claims.Audience != "https://graph.microsoft.com" {
		t.Errorf("broker token -scope graph after the refresh token was revoked: audience %q, want https://graph.microsoft.com", claims.Audience)
	}
	env.imapLogin(t, presence)
	env.checkServing(t, presence, "password", presence)
	env.checkSecrets(t)
}

func hasCredential(st accountStatus, kind string) bool {
	for _, c := range st.Credentials {
		if c.Kind == kind {
			return true
		}
	}
	return false
}
