package proxy

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestSlotsSetMax(t *testing.T) {
	s := NewSlots(2)
	ctx := context.Background()
	r1, _ := s.Acquire(ctx, "a", 0)
	r2, _ := s.Acquire(ctx, "a", 0)
	got := make(chan func(), 1)
	go func() {
		r, err := s.Acquire(ctx, "a", 0)
		if err == nil {
			got <- r
		}
	}()
	select {
	case <-got:
		t.Fatal("a third holder got a slot at a cap of 2")
	case <-time.After(50 * time.Millisecond):
	}
	s.SetMax(3)
	var r3 func()
	select {
	case r3 = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a raised cap did not hand the waiter a slot")
	}
	// Lowered below the holders: a release frees, it does not hand over.
	s.SetMax(1)
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	go func() {
		r, err := s.Acquire(wctx, "a", 0)
		if err == nil {
			got <- r
		}
	}()
	r1()
	r2()
	if n := s.InUse("a"); n != 1 {
		t.Fatalf("in use after two releases: %d, want 1", n)
	}
	r3()
	select {
	case r := <-got:
		r()
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter did not get the slot once under the cap")
	}
}

func TestConnLimiterSetLimits(t *testing.T) {
	l := NewConnLimiter(1, 1)
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	release, refused := l.acquire(addr)
	if refused != "" {
		t.Fatal(refused)
	}
	if _, refused := l.acquire(addr); refused == "" {
		t.Fatal("a second connection at a cap of 1 was accepted")
	}
	l.SetLimits(2, 2)
	r2, refused := l.acquire(addr)
	if refused != "" {
		t.Fatalf("refused at a raised cap: %s", refused)
	}
	release()
	r2()
}
