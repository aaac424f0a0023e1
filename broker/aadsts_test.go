package broker

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// The codes of docs/reference: each must be explained.
var listedCodes = []int{50011, 500113, 65001, 650057, 7000215, 7000222, 7000218, 700025, 700016, 90002,
	50194, 70011, 28000, 700022, 50076, 50079, 50126, 50055, 50057, 50053, 53003, 530035, 70043, 700082,
	70008, 50173, 54005, 50196,
	// Met by the delegated sign-ins and certificate credentials.
	50148, 65004, 700027, 700024, 50027, 65002}

func TestEveryListedCodeIsExplained(t *testing.T) {
	for _, c := range listedCodes {
		s := explanations[c]
		if s == "" {
			t.Errorf("AADSTS%d has no explanation", c)
			continue
		}
		if strings.ContainsAny(s, "\r\n") || !strings.HasSuffix(s, ".") || strings.Count(s, ". ") > 0 {
			t.Errorf("AADSTS%d: explanation is not one sentence: %q", c, s)
		}
	}
	if len(explanations) != len(listedCodes) {
		t.Errorf("got %d explanations, want %d", len(explanations), len(listedCodes))
	}
}

func retrieveError(status int, body string, header http.Header) error {
	return &oauth2.RetrieveError{Response: &http.Response{StatusCode: status, Header: header}, Body: []byte(body)}
}

func TestClassify(t *testing.T) {
	netErr := &url.Error{Op: "Post", URL: "https://login.microsoftonline.com/t/oauth2/v2.0/token", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}
	tests := []struct {
		name       string
		err        error
		permanent  bool
		code       int
		want       string // in the explanation
		retryAfter time.Duration
	}{
		{"network", netErr, false, 0, "connection refused", 0},
		{"timeout", errors.New("context deadline exceeded"), false, 0, "outbound HTTPS", 0},
		{"503", retrieveError(503, "Service Unavailable", nil), false, 0, "HTTP 503", 0},
		{"500 with json", retrieveError(500, aadstsBody(90033, "server_error", "A transient error."), nil), false, 90033, "HTTP 500", 0},
		{"429", retrieveError(429, "", http.Header{"Retry-After": {"30"}}), false, 0, "throttling", 30 * time.Second},
		{"temporarily_unavailable", retrieveError(400, `{"error":"temporarily_unavailable","error_description":"busy"}`, nil), false, 0, "temporarily unavailable", 0},
		{"loop detected", retrieveError(400, aadstsBody(50196, "invalid_grant", "The server terminated an operation because it encountered a client request loop."), nil), false, 50196, "loop", 0},
		{"bad secret", retrieveError(401, aadstsBody(7000215, "invalid_client", "Invalid client secret provided."), nil), true, 7000215, "secret's ID", 0},
		{"expired secret", retrieveError(401, aadstsBody(7000222, "invalid_client", "The provided client secret keys are expired."), nil), true, 7000222, "expired", 0},
		{"consent", retrieveError(400, aadstsBody(65001, "invalid_grant", "The user or administrator has not consented."), nil), true, 65001, "Grant admin consent", 0},
		{"code only in description", retrieveError(400, `{"error":"invalid_client","error_description":"AADSTS700016: Application not found."}`, nil), true, 700016, "client_id", 0},
		{"unknown code", retrieveError(400, aadstsBody(9999999, "invalid_request", `Something new.\r\nMore lines.`), nil), true, 9999999, "Something new", 0},
		{"html page", retrieveError(403, "<html>Forbidden by proxy</html>", nil), true, 0, "without an OAuth error", 0},
		{"wrapped", errors.Join(errors.New("x"), retrieveError(401, aadstsBody(7000215, "invalid_client", "Invalid client secret provided."), nil)), true, 7000215, "Certificates & secrets", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			te := classify(tt.err)
			if te.Permanent != tt.permanent || te.Code != tt.code {
				t.Fatalf("got permanent=%v code=%d, want permanent=%v code=%d", te.Permanent, te.Code, tt.permanent, tt.code)
			}
			if !strings.Contains(te.Explanation, tt.want) {
				t.Fatalf("explanation %q does not mention %q", te.Explanation, tt.want)
			}
			if te.retryAfter != tt.retryAfter {
				t.Fatalf("got retryAfter %v, want %v", te.retryAfter, tt.retryAfter)
			}
			if msg := te.Error(); strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("Error() is not one line: %q", msg)
			}
			if !errors.Is(te, tt.err) {
				t.Fatalf("TokenError does not unwrap to the original error")
			}
		})
	}
}

func TestTokenErrorMessage(t *testing.T) {
	te := classify(retrieveError(401, aadstsBody(7000215, "invalid_client", "Invalid client secret provided."), nil))
	msg := te.Error()
	for _, want := range []string{"AADSTS7000215", "trace_id=0000aaaa-0000", "correlation_id=1111bbbb-1111", "client_secret_file"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Error() = %q, want it to contain %q", msg, want)
		}
	}
}

func TestDecodeErrorBody(t *testing.T) {
	tests := []struct {
		body string
		ok   bool
		code int
	}{
		{aadstsBody(65001, "invalid_grant", "no consent"), true, 65001},
		{`{"error":"invalid_client","error_codes":[1,7000215]}`, true, 7000215},
		{`{"error":"invalid_client","error_codes":[123]}`, true, 123},
		{`{"error":"x","error_description":"AADSTS50126: bad"}`, true, 50126},
		{`{"error":"x","error_codes":"nope"}`, false, 0},
		{`<p>AADSTS53003: blocked</p>`, false, 53003},
		{`AADSTS`, false, 0},
		{``, false, 0},
	}
	for _, tt := range tests {
		eb, ok := decodeErrorBody([]byte(tt.body))
		if ok != tt.ok || eb.code() != tt.code {
			t.Errorf("decodeErrorBody(%q) = code %d, ok %v; want %d, %v", tt.body, eb.code(), ok, tt.code, tt.ok)
		}
	}
}

func FuzzDecodeErrorBody(f *testing.F) {
	f.Add([]byte(aadstsBody(7000215, "invalid_client", "Invalid client secret provided.")))
	f.Add([]byte(`{"error":"temporarily_unavailable"}`))
	f.Add([]byte(`AADSTS99999999999999`))
	f.Add([]byte(`{"error":"x","error_codes":[-5, 1e3]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		eb, _ := decodeErrorBody(body)
		if eb.code() < 0 {
			t.Fatalf("negative code %d", eb.code())
		}
		for _, status := range []int{400, 503} {
			te := classify(retrieveError(status, string(body), nil))
			if strings.ContainsAny(te.Error(), "\r\n") {
				t.Fatalf("Error() is not one line: %q", te.Error())
			}
			if status == 503 && te.Permanent {
				t.Fatalf("HTTP 503 classified permanent")
			}
		}
	})
}
