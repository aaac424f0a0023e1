package proxy

import (
	"net"
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

type closeCounter struct{ n int }

func (c *closeCounter) Close() error { c.n++; return nil }

// TestConnDetach: a detached closer outlives the connection; one attached
// closes with it, and nothing detaches once it is closed.
func TestConnDetach(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	tc := NewConn(a)
	kept, other := &closeCounter{}, &closeCounter{}
	tc.Attach(kept)
	tc.Attach(other)
	if !tc.Detach(kept) {
		t.Fatal("Detach of an attached closer: got false")
	}
	if tc.Detach(kept) {
		t.Fatal("Detach of a closer no longer attached: got true")
	}
	tc.Close()
	if kept.n != 0 || other.n != 1 {
		t.Fatalf("closes: detached %d, attached %d; want 0 and 1", kept.n, other.n)
	}
	tc.Attach(kept)
	if tc.Detach(kept) || kept.n != 1 {
		t.Fatalf("after Close: Attach must close at once (got %d closes) and Detach fail", kept.n)
	}
}
