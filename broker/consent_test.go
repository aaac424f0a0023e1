package broker

import (
	"testing"
	"time"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/test/m365sim"
)

// A refresh asking for a permission the user never consented to (POP,
// after [pop3] was added) keeps the sign-in alive with what was granted,
// instead of taking IMAP and SMTP down until broker login.
func TestRefreshWithoutConsentKeepsTheGrantedScope(t *testing.T) {
	e := newSimEnv(t, config.FlowDeviceCode) // no sealed password to fall back on
	b := e.broker(t)
	e.signInByPassword(t, b)
	var fetched signal
	b.tokens.onFetch = fetched.notify
	e.entra.FailNext(1, m365sim.Failure{Status: 400, Error: "invalid_grant", Codes: []int{65001},
		Description: "AADSTS65001: The user or administrator has not consented to use the application with ID '" + simClientID + "'."})
	before := e.entra.TokenRequests()
	e.clock.Advance(45 * time.Minute)
	b.Start()
	waitUntil(t, &fetched, "the refresh", func() bool { return b.AccountStatus(agent).LastRefresh.Equal(e.clock.Now()) })
	if s := b.AccountStatus(agent); s.State != StateOK || !s.LastRefreshOK {
		t.Fatalf("state %s after a refresh refused for consent: %s", s.State, s.Explanation)
	}
	if n := e.entra.TokenRequests() - before; n != 2 {
		t.Fatalf("%d token requests, want 2 (refused, then the granted scope)", n)
	}
	if _, err := e.upstreamToken(t, b, queue); err != nil {
		t.Fatal(err)
	}
}
