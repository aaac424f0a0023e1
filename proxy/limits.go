package proxy

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultPreAuthTimeout is how long a client has, from connecting, to
	// log in: IMAP LOGIN or AUTHENTICATE, SMTP AUTH (or, for an SMTP
	// server's UnauthenticatedAs, its first MAIL). Every read before
	// then stops at this limit, however slowly the client trickles its
	// bytes.
	DefaultPreAuthTimeout = 60 * time.Second
	// DefaultMaxConnections caps client connections at once over every
	// server sharing a ConnLimiter.
	DefaultMaxConnections = 1000
	// DefaultMaxConnectionsPerSource caps client connections at once from
	// one source: an IPv4 address or an IPv6 /64, loopback included (a
	// local mail client opens a few; a runaway script opens thousands).
	DefaultMaxConnectionsPerSource = 100
)

// Reasons of refusals, as logged ("connection refused reason=...") and
// named after the settings that set the caps.
const (
	refusedMaxConnections = "max_connections"
	refusedPerSource      = "max_connections_per_source"
	refusedPerMailbox     = "max_connections_per_mailbox"
)

const (
	// refusalWriteTimeout bounds writing a refused connection its one
	// line (and, on an implicit-TLS listener, the handshake before it).
	refusalWriteTimeout = 5 * time.Second
	// maxRefusalsInFlight bounds the refusals being written at once;
	// beyond it a refused connection is closed without a word, so that a
	// flood cannot pile up goroutines.
	maxRefusalsInFlight = 64
	// ipv6SourcePrefixLen is the IPv6 prefix counted as one source.
	ipv6SourcePrefixLen = 64
)

// SetDefault sets an option left at zero (or below) to its default: the
// options structs document a zero value as "the default".
func SetDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// ConnLimiter caps client connections in total and per source address.
// One limiter given to several servers (IMAP, SMTP) caps them together.
type ConnLimiter struct {
	max, perSource int

	mu      sync.Mutex
	total   int
	sources map[netip.Addr]int
}

// NewConnLimiter returns a limiter of max connections in total and
// perSource per source address; zero or less means
// DefaultMaxConnections and DefaultMaxConnectionsPerSource.
func NewConnLimiter(max, perSource int) *ConnLimiter {
	SetDefault(&max, DefaultMaxConnections)
	SetDefault(&perSource, DefaultMaxConnectionsPerSource)
	return &ConnLimiter{max: max, perSource: perSource, sources: make(map[netip.Addr]int)}
}

// acquire counts a connection from addr. It returns a function that
// uncounts it (safe to call more than once), or the reason of a refusal.
func (l *ConnLimiter) acquire(addr net.Addr) (release func(), refused string) {
	src := sourceOf(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total >= l.max:
		return nil, refusedMaxConnections
	case l.sources[src] >= l.perSource:
		return nil, refusedPerSource
	}
	l.total++
	l.sources[src]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.sources[src]--; l.sources[src] <= 0 {
				delete(l.sources, src)
			}
		})
	}, ""
}

// Connections returns how many connections the limiter counts now.
func (l *ConnLimiter) Connections() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// sourceOf is the key a connection is counted under: its IPv4 address, or
// its IPv6 /64, which one host usually has whole. Addresses other than
// TCP's share the zero key.
func sourceOf(addr net.Addr) netip.Addr {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	a, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Addr{}
	}
	a = a.Unmap()
	if a.Is6() {
		if p, err := a.Prefix(ipv6SourcePrefixLen); err == nil {
			a = p.Addr()
		}
	}
	return a
}

// Stats are a server's counters since it was created.
type Stats struct {
	// Sessions is the number of live sessions, logged in or not.
	Sessions int
	// RefusedMaxConnections and RefusedPerSource count connections
	// refused at the total cap and at the cap per source.
	RefusedMaxConnections int64
	RefusedPerSource      int64
	// RefusedPerMailbox counts logins refused because every upstream
	// connection of the mailbox stayed taken for the whole wait.
	RefusedPerMailbox int64
	// PreAuthTimeouts counts sessions closed at the pre-login time limit.
	PreAuthTimeouts int64
}

// serverStats are the counters behind Stats.
type serverStats struct {
	refusedMax, refusedSource, refusedMailbox, preAuthTimeouts atomic.Int64
}

// refused counts a refusal by its reason.
func (st *serverStats) refused(reason string) {
	switch reason {
	case refusedMaxConnections:
		st.refusedMax.Add(1)
	case refusedPerSource:
		st.refusedSource.Add(1)
	case refusedPerMailbox:
		st.refusedMailbox.Add(1)
	}
}

func (st *serverStats) snapshot(sessions int) Stats {
	return Stats{
		Sessions:              sessions,
		RefusedMaxConnections: st.refusedMax.Load(),
		RefusedPerSource:      st.refusedSource.Load(),
		RefusedPerMailbox:     st.refusedMailbox.Load(),
		PreAuthTimeouts:       st.preAuthTimeouts.Load(),
	}
}
