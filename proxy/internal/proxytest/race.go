//go:build race

package proxytest

// RaceEnabled: the race detector is on; memory measurements do not hold.
const RaceEnabled = true
