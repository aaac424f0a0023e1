package proxy

// A reload changes the caps of a running daemon: the limiter and the
// per-mailbox slots are shared by the servers a reload replaces and those
// that replace them, so that the caps count every session, old and new.

// SetLimits changes the caps; zero or less means the defaults. Connections
// over a lowered cap stay; new ones are refused until they are under it.
func (l *ConnLimiter) SetLimits(max, perSource int) {
	SetDefault(&max, DefaultMaxConnections)
	SetDefault(&perSource, DefaultMaxConnectionsPerSource)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max, l.perSource = max, perSource
}

// SetMax changes how many holders an account may have at once. Holders
// over a lowered cap keep their slots; waiters get slots a raised cap
// frees at once.
func (s *Slots) SetMax(max int) {
	if max < 1 {
		max = 1
	}
	s.s.setMax(max)
}

func (m *mailboxSlots) setMax(max int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.max = max
	for _, g := range m.groups {
		for g.used < m.max && len(g.waiters) > 0 {
			close(g.waiters[0])
			g.waiters = g.waiters[1:]
			g.used++
		}
	}
}
