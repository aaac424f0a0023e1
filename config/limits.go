package config

import "time"

// Bounds of the [limits] settings.
const (
	maxMaxConnections = 100000
	minPreAuthTimeout = time.Second
	maxPreAuthTimeout = 10 * time.Minute
	limitsSection     = "limits"
	keyMaxConnections = limitsSection + ".max_connections"
	keyMaxPerSource   = limitsSection + ".max_connections_per_source"
	keyPreAuthTimeout = limitsSection + ".pre_auth_timeout"
	keyDrainTimeout   = limitsSection + ".drain_timeout"
	minDrainTimeout   = time.Second
	maxDrainTimeout   = time.Hour
)

// limits validates [limits]; raw is nil when the section is absent.
func (v *validator) limits(raw *rawLimits) Limits {
	l := Limits{
		MaxConnections:          DefaultMaxConnections,
		MaxConnectionsPerSource: DefaultMaxConnectionsPerSource,
		PreAuthTimeout:          DefaultPreAuthTimeout,
		DrainTimeout:            DefaultDrainTimeout,
	}
	if raw == nil {
		return l
	}
	if n, ok := v.integer(keyMaxConnections, raw.MaxConnections); ok {
		if n < 1 || n > maxMaxConnections {
			v.errorf(keyMaxConnections, "%d is out of range: 1 to %d", n, maxMaxConnections)
		} else {
			l.MaxConnections = int(n)
		}
	}
	perSourceSet := false
	if n, ok := v.integer(keyMaxPerSource, raw.MaxConnectionsPerSource); ok {
		if n < 1 || n > maxMaxConnections {
			v.errorf(keyMaxPerSource, "%d is out of range: 1 to %d", n, maxMaxConnections)
		} else {
			l.MaxConnectionsPerSource, perSourceSet = int(n), true
		}
	}
	if l.MaxConnectionsPerSource > l.MaxConnections {
		if perSourceSet {
			v.errorf(keyMaxPerSource, "%d is more than %s (%d)", l.MaxConnectionsPerSource, keyMaxConnections, l.MaxConnections)
		} else {
			// Only max_connections was lowered: the default per source
			// follows it down.
			l.MaxConnectionsPerSource = l.MaxConnections
		}
	}
	if d, ok := v.duration(keyPreAuthTimeout, raw.PreAuthTimeout); ok {
		if d < minPreAuthTimeout || d > maxPreAuthTimeout {
			v.errorf(keyPreAuthTimeout, "%s is out of range: %s to %s", d, minPreAuthTimeout, maxPreAuthTimeout)
		} else {
			l.PreAuthTimeout = d
		}
	}
	if d, ok := v.duration(keyDrainTimeout, raw.DrainTimeout); ok {
		if d < minDrainTimeout || d > maxDrainTimeout {
			v.errorf(keyDrainTimeout, "%s is out of range: %s to %s", d, minDrainTimeout, maxDrainTimeout)
		} else {
			l.DrainTimeout = d
		}
	}
	return l
}
