package proxy

import (
	"net"
	"testing"
)

func TestConnLimiterSources(t *testing.T) {
	lim := NewConnLimiter(0, 1)
	if lim.max != DefaultMaxConnections {
		t.Fatalf("max %d, want the default %d", lim.max, DefaultMaxConnections)
	}
	addr := func(s string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(s), Port: 1} }
	rel, why := lim.acquire(addr("2001:db8::1"))
	if why != "" {
		t.Fatal(why)
	}
	// The same /64, and an IPv4-mapped twin of an IPv4 address, count
	// as the same source.
	if _, why := lim.acquire(addr("2001:db8::2")); why != refusedPerSource {
		t.Fatalf("same /64: got %q", why)
	}
	if _, why := lim.acquire(addr("2001:db8:0:1::1")); why != "" {
		t.Fatalf("other /64: got %q", why)
	}
	if _, why := lim.acquire(addr("192.0.2.1")); why != "" {
		t.Fatal(why)
	}
	if _, why := lim.acquire(addr("::ffff:192.0.2.1")); why != refusedPerSource {
		t.Fatalf("mapped address: got %q", why)
	}
	rel()
	rel()
	if n := lim.Connections(); n != 2 {
		t.Fatalf("%d connections after a double release, want 2", n)
	}
}
