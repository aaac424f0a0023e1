package imap

import (
	"strings"
	"testing"
)

func TestExplainRefusal(t *testing.T) {
	if advice, temporary, ok := ExplainRefusal("AUTHENTICATE failed."); !ok || temporary || !strings.Contains(advice, "-ImapEnabled $true") {
		t.Errorf("AUTHENTICATE failed: %q %v %v", advice, temporary, ok)
	}
	if _, temporary, ok := ExplainRefusal("Request is throttled."); !ok || !temporary {
		t.Errorf("throttled: temporary %v ok %v", temporary, ok)
	}
	if _, _, ok := ExplainRefusal("something else"); ok {
		t.Error("an unknown text explained")
	}
}
