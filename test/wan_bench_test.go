package test

import (
	"io"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/netem"
)

// wanLink is the path to the upstream in the WAN-like benchmarks: 30 ms of
// round trip and 1 Gbit/s, about what an on-premises server has to
// Exchange Online (the same link as test/perf's).
var wanLink = netem.Link{Delay: 15 * time.Millisecond, Rate: 125_000_000}

// throttle forwards TCP connections to addr over wanLink and returns its
// own address.
func throttle(t testing.TB, addr string) string {
	t.Helper()
	f, err := netem.Listen(addr, wanLink)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f.Addr()
}

// BenchmarkFetch10MBOverWAN is BenchmarkFetch10MB with the upstream behind
// the WAN link, as Exchange Online is: the proxy's local hop should then
// cost nothing measurable.
func BenchmarkFetch10MBOverWAN(b *testing.B) {
	var wan string
	env := newInProcessVia(b, io.Discard, func(addr string) string {
		wan = throttle(b, addr)
		return wan
	})
	benchmarkFetch(b, env, wan)
}
