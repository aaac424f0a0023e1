package broker

import (
	"fmt"
	"testing"
	"time"
)

func TestSuccessCache(t *testing.T) {
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	c := newSuccessCache()
	k := c.keyOf(mailboxA, "pw")
	if c.keyOf(mailboxB, "pw") == k || c.keyOf(mailboxA, "pw2") == k {
		t.Fatalf("keys of different logins collide")
	}
	c.put(k, c.generation(), cacheEntry{mailbox: mailboxA, id: "abcdef", expires: now.Add(time.Hour)}, now)
	if id, ok := c.get(k, now.Add(59*time.Minute)); !ok || id != "abcdef" {
		t.Fatalf("get = %q, %v; want abcdef, true", id, ok)
	}
	if _, ok := c.get(k, now.Add(time.Hour)); ok {
		t.Fatalf("entry outlived its TTL")
	}

	// A check that began before a revocation must not cache its result.
	gen := c.generation()
	c.revoke(mailboxB, "other")
	c.put(k, gen, cacheEntry{mailbox: mailboxA, id: "abcdef", expires: now.Add(time.Hour)}, now)
	if _, ok := c.get(k, now); ok {
		t.Fatalf("a result from before a revocation was cached")
	}

	c.put(k, c.generation(), cacheEntry{mailbox: mailboxA, id: "abcdef", expires: now.Add(time.Hour)}, now)
	c.revoke(mailboxA, "abcdef")
	if _, ok := c.get(k, now); ok {
		t.Fatalf("revoked password still remembered")
	}
}

func TestSuccessCacheBounded(t *testing.T) {
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	c := newSuccessCache()
	for i := range successSize + 100 {
		k := c.keyOf(mailboxA, fmt.Sprint(i))
		c.put(k, c.generation(), cacheEntry{mailbox: mailboxA, id: "abcdef", expires: now.Add(time.Hour)}, now)
	}
	if n := len(c.entries); n != successSize {
		t.Fatalf("got %d entries, want %d", n, successSize)
	}
}
