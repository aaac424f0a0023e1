package test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const tokenRefreshed = `msg="token refreshed"`

// TestRotationSurvivesCrash: the simulated Entra makes every refresh token
// single use (strict rotation) and counts any redemption of one that was
// no longer the newest. The daemon is killed with SIGKILL right after a
// sign-in, right after its refresher redeemed the refresh token, and right
// after broker token redeemed it for Microsoft Graph; each time it starts
// again on the same state directory and its next refresh must present the
// newest refresh token.
func TestRotationSurvivesCrash(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps:          []loginApp{{Name: "desktop", ClientID: publicClientID, RedirectURIs: []string{"http://localhost"}}},
		Accounts:      []loginAccount{{Mailbox: agent, App: "desktop", Flow: "auth_code"}},
		Users:         map[string]string{agent: "Agent-Passw0rd-rotation"},
		TokenLifetime: 6 * time.Second, // refreshed every 3 s
	})
	env.Entra.SetStrictRefreshRotation(true)
	// Waits for the daemon's n-th refresh, failing at once if it lost the
	// sign-in instead.
	waitRefresh := func(n int) {
		t.Helper()
		env.Daemon.waitLogCountUnless(tokenRefreshed, n, "account needs sign-in")
	}
	checkNoReuse := func(when string) {
		t.Helper()
		if n := env.Entra.RefreshTokenReuse(); n != 0 {
			t.Fatalf("%s: Entra saw %d redemptions of a refresh token that was no longer the newest\n%s", when, n, env.Daemon.Log())
		}
	}

	env.pasteLogin(t, agent, agent, agent)
	env.crashAndRestart(t)
	waitRefresh(1)
	checkNoReuse("after a crash right after broker login")

	for i := range 2 {
		waitRefresh(env.Daemon.countLog(tokenRefreshed) + 1)
		env.crashAndRestart(t)
		waitRefresh(1)
		checkNoReuse(fmt.Sprintf("after a crash right after refresh %d", i+1))
	}

	env.token(t, agent, "graph")
	env.crashAndRestart(t)
	waitRefresh(2)
	checkNoReuse("after a crash right after broker token -scope graph")
	if strings.Contains(env.Daemon.Log(), "account needs sign-in") {
		t.Fatalf("the sign-in was lost across crashes\n%s", env.Daemon.Log())
	}
	env.imapLogin(t, agent)
	env.sendAndReadBack(t, agent)
	env.checkServing(t, agent, "auth_code", agent)
	checkNoReuse("at the end")
	env.checkSecrets(t)
}

// TestRevokedSignInNeedsLogin: an administrator revokes the delegated
// user's sessions. Once the daemon's refresh fails, status -json reports
// the account needs-login with the reason, the log names the broker login
// to run, and once the access token has run out its IMAP clients get
// NO [AUTHENTICATIONFAILED] and its SMTP clients 454 4.7.0, both naming
// broker login. The app-only account of the same daemon keeps serving.
// broker login then restores the account without a restart.
func TestRevokedSignInNeedsLogin(t *testing.T) {
	t.Parallel()
	env := newLoginEnv(t, loginEnvOptions{
		Apps: []loginApp{
			{Name: "mailapp", ClientID: webClientID, Secret: "Qx7~revoke.secret-value_0123456789", RedirectURIs: []string{"http://localhost"}},
			{Name: "scanners", ClientID: appOnlyClientID, Secret: "Qx7~scanners.secret-value_98765", Roles: smtpRoles, Mailboxes: []string{scanner}},
		},
		Accounts: []loginAccount{
			{Mailbox: agent, App: "mailapp", Flow: "auth_code"},
			{Mailbox: scanner, App: "scanners", Flow: "client_credentials"},
		},
		Users:         map[string]string{agent: "Agent-Passw0rd-revoke"},
		TokenLifetime: 10 * time.Second,
	})
	env.pasteLogin(t, agent, agent, agent)
	env.imapLogin(t, agent)
	env.imapLogin(t, scanner)

	if err := env.Entra.RevokeSessions(tenant, agent); err != nil {
		t.Fatal(err)
	}
	st := env.waitStatus(t, agent, "needs-login", func(st accountStatus, code int) bool {
		return st.State == "needs-login" && code == 4
	})
	if !strings.Contains(st.Explanation, "50173") || !strings.Contains(st.Explanation, "broker login") {
		t.Fatalf("status explanation %q: want AADSTS50173 and broker login", st.Explanation)
	}
	line := env.Daemon.waitLog("account needs sign-in")
	if !strings.Contains(line, "broker login "+agent) {
		t.Fatalf("daemon logged %q: want the broker login command for %s", line, agent)
	}
	env.waitStatus(t, agent, "without a valid access token", func(st accountStatus, _ int) bool {
		return st.AccessTokenExpires.IsZero()
	})
	env.checkNeedsLoginIMAP(t, agent)
	env.checkNeedsLoginSMTP(t, agent)

	// The app-only account keeps getting tokens and serving.
	n := env.Daemon.countLog(tokenRefreshed + " account=" + scanner)
	env.Daemon.waitLogCount(tokenRefreshed+" account="+scanner, n+1)
	env.imapLogin(t, scanner)
	env.sendAndReadBack(t, scanner)
	if st, code := env.status(t, scanner); code != 0 || (st.State != "ok" && st.State != "refreshing") {
		t.Fatalf("status of the app-only account: %+v (exit %d), want it serving", st, code)
	}

	// broker login, the daemon still running.
	env.Entra.SetTokenLifetime(0)
	env.pasteLogin(t, agent, agent, agent)
	env.imapLogin(t, agent)
	env.sendAndReadBack(t, agent)
	env.checkServing(t, agent, "auth_code", agent)
	env.checkSecrets(t)
}
