package broker

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// fakeEntra is a minimal v2.0 token endpoint for the client credentials
// grant, with failure injection and a gate that holds requests.
type fakeEntra struct {
	srv      *httptest.Server
	requests atomic.Int64
	// changed is notified when a request arrives and when it is answered.
	changed signal

	mu        sync.Mutex
	expiresIn int
	fail      *fakeFailure
	gate      chan struct{} // requests wait while non-nil
	issued    []string
}

type fakeFailure struct {
	status int
	body   string
	header http.Header
}

func newFakeEntra(t *testing.T) *fakeEntra {
	f := &fakeEntra{expiresIn: 3600}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.release()
		f.srv.Close()
	})
	return f
}

func (f *fakeEntra) URL() string { return f.srv.URL }

// block holds every request from now until release.
func (f *fakeEntra) block() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gate == nil {
		f.gate = make(chan struct{})
	}
}

func (f *fakeEntra) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gate != nil {
		close(f.gate)
		f.gate = nil
	}
}

// failWith makes requests fail; status 0 makes them succeed again.
func (f *fakeEntra) failWith(status int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = nil
	if status != 0 {
		f.fail = &fakeFailure{status: status, body: body}
	}
}

func (f *fakeEntra) setExpiresIn(s int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expiresIn = s
}

func (f *fakeEntra) tokens() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.issued...)
}

func (f *fakeEntra) count() int { return int(f.requests.Load()) }

func aadstsBody(code int, errCode, msg string) string {
	return fmt.Sprintf(`{"error":%q,"error_description":"AADSTS%d: %s Trace ID: 0000aaaa-0000 Correlation ID: 1111bbbb-1111 Timestamp: 2026-03-01 09:00:00Z","error_codes":[%d],"timestamp":"2026-03-01 09:00:00Z","trace_id":"0000aaaa-0000","correlation_id":"1111bbbb-1111"}`,
		errCode, code, msg, code)
}

func (f *fakeEntra) serve(w http.ResponseWriter, r *http.Request) {
	n := f.requests.Add(1)
	f.changed.notify()
	defer f.changed.notify()
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	if f.fail != nil {
		for k, v := range f.fail.header {
			w.Header()[k] = v
		}
		w.WriteHeader(f.fail.status)
		fmt.Fprint(w, f.fail.body)
		return
	}
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") || r.ParseForm() != nil {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, aadstsBody(900144, "invalid_request", "The request body must contain the following parameter: 'grant_type'."))
		return
	}
	switch {
	case r.PostForm.Get("grant_type") != "client_credentials":
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, aadstsBody(70003, "unsupported_grant_type", "The app requested an unsupported grant type."))
	case r.PostForm.Get("client_id") != testClientID:
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, aadstsBody(700016, "unauthorized_client", "Application not found in the directory."))
	case r.PostForm.Get("client_secret") != testSecret:
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, aadstsBody(7000215, "invalid_client", "Invalid client secret provided."))
	case r.PostForm.Get("scope") != "https://outlook.office365.com/.default":
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, aadstsBody(70011, "invalid_scope", "The provided value for the input parameter 'scope' is not valid."))
	default:
		tok := fmt.Sprintf("eyJ0eXAiOiJKV1Qi.access-%d.sig", n)
		f.issued = append(f.issued, tok)
		fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":%d,"ext_expires_in":%d,"access_token":%q}`, f.expiresIn, f.expiresIn, tok)
	}
}
