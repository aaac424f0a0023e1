package imap

import (
	"io"
	"strings"
	"testing"

	"github.com/mailbroker/broker/proxy"
)

func TestExplainIMAP(t *testing.T) {
	tests := []struct {
		text      string
		ok        bool
		temporary bool
		advice    string
	}{
		{"AUTHENTICATE failed.", true, false, "-ImapEnabled $true"},
		{"authenticate FAILED", true, false, "-AccessRights FullAccess"},
		{"User is authenticated but not connected.", true, false, "no rights on this mailbox"},
		{"Request is throttled. Suggested Backoff Time: 250 milliseconds", true, true, "throttling"},
		{"Session invalidated - AccessTokenExpired", true, true, "expired"},
		{"Some other failure", false, false, ""},
	}
	for _, tt := range tests {
		e, ok := explain(tt.text)
		if ok != tt.ok || e.temporary != tt.temporary || !strings.Contains(e.advice, tt.advice) {
			t.Errorf("explain(%q) = %+v, %v; want ok=%v temporary=%v advice containing %q", tt.text, e, ok, tt.ok, tt.temporary, tt.advice)
		}
	}
}

func TestUpstreamLoginError(t *testing.T) {
	tests := []struct {
		err  error
		kind proxy.ErrorKind
	}{
		{&rejection{Status: "NO", Text: "AUTHENTICATE failed."}, proxy.KindAccount},
		{&rejection{Status: "NO", Text: "unknown refusal"}, proxy.KindAccount},
		{&rejection{Status: "BAD", Text: "Request is throttled."}, proxy.KindUnavailable},
		{io.ErrUnexpectedEOF, proxy.KindUnavailable},
	}
	for _, tt := range tests {
		if le := upstreamLoginError(tt.err); le.Kind != tt.kind || le.Err != tt.err {
			t.Errorf("upstreamLoginError(%v) = %v, want kind %v", tt.err, le, tt.kind)
		}
	}
}
