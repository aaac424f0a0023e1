package m365sim

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

var throttled = Failure{
	Status:      429,
	Error:       "temporarily_unavailable",
	Codes:       []int{50196},
	Description: "AADSTS50196: The server terminated an operation because it encountered a client request loop.",
}

func ccForm() url.Values {
	return form("grant_type", "client_credentials", "client_id", confID, "client_secret", secret, "scope", outlookDef)
}

func TestFailNext(t *testing.T) {
	f := newFixture(t)
	f.e.FailNext(2, throttled)
	for i := range 2 {
		// Injected failures win over the request's own outcome.
		tenant := []string{domain, "unknown.example"}[i]
		status, eb := f.tokenError(t, tenant, ccForm())
		checkError(t, status, eb, 429, "temporarily_unavailable", 50196)
	}
	f.token(t, domain, ccForm())
	if got := f.e.TokenRequests(); got != 3 {
		t.Fatalf("TokenRequests: got %d, want 3", got)
	}
}

// TestTokenRequestsByClient counts by the client a request names, whether
// it is granted, refused or authenticated with Basic.
func TestTokenRequestsByClient(t *testing.T) {
	f := newFixture(t)
	f.token(t, domain, ccForm())
	f.token(t, domain, ccForm())
	wrong := ccForm()
	wrong.Set("client_secret", "wrong")
	f.tokenError(t, domain, wrong)
	req, err := http.NewRequest(http.MethodPost, f.tokenURL(domain), strings.NewReader(
		form("grant_type", "client_credentials", "scope", outlookDef).Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(publicID, "")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := f.e.TokenRequestsByClient()
	if want := map[string]int64{confID: 3, publicID: 1}; !maps.Equal(got, want) {
		t.Fatalf("TokenRequestsByClient: got %v, want %v", got, want)
	}
}

func TestSetFailure(t *testing.T) {
	f := newFixture(t)
	down := &Failure{Status: 503, Error: "temporarily_unavailable", Codes: []int{90033}, Description: "AADSTS90033: A transient error has occurred. Please try again."}
	f.e.SetFailure(down)
	down.Status = 200 // the simulator keeps its own copy
	for range 3 {
		status, eb := f.tokenError(t, domain, ccForm())
		checkError(t, status, eb, 503, "temporarily_unavailable", 90033)
	}
	f.e.FailNext(1, throttled)
	status, eb := f.tokenError(t, domain, ccForm())
	checkError(t, status, eb, 429, "temporarily_unavailable", 50196)
	f.e.SetFailure(nil)
	f.token(t, domain, ccForm())
}

func TestHold(t *testing.T) {
	f := newFixture(t)
	release := f.e.Hold()
	const n = 5
	var done atomic.Int64
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Go(func() {
			statuses[i], _ = post(t, f.tokenURL(domain), ccForm())
			done.Add(1)
		})
	}
	if err := f.e.WaitTokenRequests(context.Background(), n); err != nil {
		t.Fatalf("WaitTokenRequests: %v", err)
	}
	if got := done.Load(); got != 0 {
		t.Fatalf("%d requests finished while held, want 0", got)
	}
	release()
	release() // a second call is harmless
	wg.Wait()
	for i, s := range statuses {
		if s != http.StatusOK {
			t.Fatalf("request %d: got %d, want 200", i, s)
		}
	}
	if got := f.e.TokenRequests(); got != n {
		t.Fatalf("TokenRequests: got %d, want %d", got, n)
	}
}

func TestWaitTokenRequestsCancelled(t *testing.T) {
	f := newFixture(t)
	f.token(t, domain, ccForm())
	if err := f.e.WaitTokenRequests(context.Background(), 1); err != nil {
		t.Fatalf("WaitTokenRequests(1) after one request: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.e.WaitTokenRequests(ctx, 2); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestCloseReleasesHeld(t *testing.T) {
	e, err := NewEntra(EntraOptions{})
	if err != nil {
		t.Fatalf("NewEntra: %v", err)
	}
	e.Hold()
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		resp, err := http.PostForm(e.URL()+"/x/oauth2/v2.0/token", nil)
		if err == nil {
			resp.Body.Close()
		}
	}()
	if err := e.WaitTokenRequests(context.Background(), 1); err != nil {
		t.Fatalf("WaitTokenRequests: %v", err)
	}
	e.Close()
	<-finished
}
