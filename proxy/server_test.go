package proxy

import (
	"strings"
	"testing"
)

func TestSessionIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := newSessionID()
		if len(id) != 8 || strings.Trim(id, "0123456789abcdef") != "" || seen[id] {
			t.Fatalf("bad or repeated session id %q", id)
		}
		seen[id] = true
	}
}
