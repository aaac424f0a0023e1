package main

import (
	"syscall"
	"unsafe"
)

// monotonicUsec is CLOCK_MONOTONIC in microseconds, for sd_notify's
// MONOTONIC_USEC= (systemd's Type=notify-reload protocol).
func monotonicUsec() int64 {
	var ts syscall.Timespec
	const clockMonotonic = 1
	if _, _, e := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
		return 0
	}
	return ts.Sec*1e6 + ts.Nsec/1e3
}
