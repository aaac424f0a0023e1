package config

const (
	// DefaultWarmConnections is the default of warm_connections in [imap]
	// and [pop3]: the most upstream connections kept connected and
	// greeted, ready for the next logins; fewer while logins are rare,
	// none once they stop.
	DefaultWarmConnections = 4
	// maxWarmConnections bounds warm_connections.
	maxWarmConnections = 16
)

// warmConnections validates a section's warm_connections: 0 (none) to
// maxWarmConnections.
func (v *validator) warmConnections(section string, raw number) int {
	key := section + ".warm_connections"
	n, ok := v.integer(key, raw)
	if !ok {
		return DefaultWarmConnections
	}
	if n < 0 || n > maxWarmConnections {
		v.errorf(key, "%d is out of range: 0 (none) to %d", n, maxWarmConnections)
		return DefaultWarmConnections
	}
	return int(n)
}
