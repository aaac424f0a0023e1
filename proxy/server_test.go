package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
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

// TestTakeSlotSince: a resumed wait ends ConnectionWait after it began,
// not after the call that resumes it.
func TestTakeSlotSince(t *testing.T) {
	const wait = 300 * time.Millisecond
	s := NewServer(&ServerOptions{MaxConnectionsPerMailbox: 1, ConnectionWait: wait, Protocol: SMTP,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	a, b := net.Pipe()
	defer b.Close()
	tc := NewConn(a)
	release, err := s.TakeSlot(context.Background(), tc, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	start := time.Now()
	if _, err := s.TakeSlotSince(context.Background(), tc, "alice", start.Add(-wait+50*time.Millisecond)); !errors.Is(err, ErrSlotWait) {
		t.Fatalf("resumed wait: got %v, want ErrSlotWait", err)
	}
	if took := time.Since(start); took >= wait {
		t.Fatalf("a wait resumed 50 ms before its end took %v", took)
	}
}
