//go:build !linux

package main

import "time"

var processStart = time.Now()

// monotonicUsec stands in for CLOCK_MONOTONIC where systemd does not run.
func monotonicUsec() int64 { return time.Since(processStart).Microseconds() }
