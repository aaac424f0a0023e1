package broker

import (
	"context"
	"testing"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/proxy"
)

// A Graph token that Graph refused is dropped from the cache, and only
// that one: the next message's Bearer gets a new token.
func TestGraphTokenRejected(t *testing.T) {
	e := newEnv(t)
	// The fake token endpoint issues the one app-only scope it knows.
	e.cfg.Apps[0].Cloud.GraphResource = "https://outlook.office365.com"
	e.cfg.Accounts[0].SMTPVia = config.SMTPViaGraph
	b := e.broker(t)
	up := b.graphUpstream(proxy.SMTP, mailboxA)
	if up == nil || up.Bearer == nil || up.BearerRejected == nil {
		t.Fatalf("graphUpstream: %+v, want a Bearer and a BearerRejected", up)
	}
	ctx := context.Background()
	tok1, err := up.Bearer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := e.entra.count()
	if again, err := up.Bearer(ctx); err != nil || again != tok1 || e.entra.count() != n {
		t.Fatalf("second Bearer: %q, %v, %d requests (was %d); want the cached token", again, err, e.entra.count(), n)
	}
	up.BearerRejected("some older token")
	if again, _ := up.Bearer(ctx); again != tok1 {
		t.Fatal("a rejected token that is not the cached one dropped the cached one")
	}
	up.BearerRejected(tok1)
	tok2, err := up.Bearer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok2 == tok1 || e.entra.count() != n+1 {
		t.Fatalf("after the rejection: same token %v, %d requests (was %d); want a new token from one request", tok2 == tok1, e.entra.count(), n)
	}
	if b.graphUpstream(proxy.SMTP, mailboxB) != nil {
		t.Fatal("an account that sends through SMTP got a Graph upstream")
	}
}
