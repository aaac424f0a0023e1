package graph

import (
	"os"
	"syscall"
)

// oTMPFILE is Linux's O_TMPFILE (__O_TMPFILE | O_DIRECTORY), the same on
// every architecture Go supports but alpha, sparc and parisc.
const oTMPFILE = 0x400000 | syscall.O_DIRECTORY

// tempFile opens a file in dir that has no name: with O_TMPFILE where the
// file system supports it, else created and unlinked at once.
func tempFile(dir string) (*os.File, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	fd, err := syscall.Open(dir, oTMPFILE|syscall.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(spool)"), nil
	}
	return unlinkedTemp(dir)
}
