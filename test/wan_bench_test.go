package test

import (
	"io"
	"net"
	"testing"
	"time"
)

// wanRate is the upstream bandwidth of the WAN-like benchmarks: 1 Gbit/s,
// more than most sites have to Exchange Online.
const wanRate = 125 << 20 // bytes per second

// throttle forwards TCP connections to addr, limiting the upstream-to-client
// direction to wanRate, and returns its own address.
func throttle(t testing.TB, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				copyAtRate(c, u, wanRate)
			}()
		}
	}()
	return l.Addr().String()
}

// copyAtRate copies src to dst no faster than rate bytes per second.
func copyAtRate(dst io.Writer, src io.Reader, rate int) {
	buf := make([]byte, 32<<10)
	start, sent := time.Now(), 0
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			sent += n
			if ahead := time.Duration(sent)*time.Second/time.Duration(rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead) // pacing, not synchronisation
			}
		}
		if err != nil {
			return
		}
	}
}

// BenchmarkFetch10MBOverWAN is BenchmarkFetch10MB with the upstream behind
// a 1 Gbit/s link, as Exchange Online is: the proxy's local hop should then
// cost nothing measurable.
func BenchmarkFetch10MBOverWAN(b *testing.B) {
	var wan string
	env := newInProcessVia(b, io.Discard, func(addr string) string {
		wan = throttle(b, addr)
		return wan
	})
	benchmarkFetch(b, env, wan)
}
