// Package harness starts real servers (Dovecot, Postfix) as test
// upstreams for broker. They run from Debian's packages as private instances
// and need root, because they drop privileges to their own users.
package harness

// TB is the part of testing.TB the harness uses, so that tests and
// benchmarks can both start upstreams.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Logf(format string, args ...any)
}
