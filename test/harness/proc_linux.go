package harness

import "syscall"

// sysProcAttr puts a server in its own process group, so that stopping it
// can sweep every child, and has the kernel end it if the test binary dies
// before its cleanup runs.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
