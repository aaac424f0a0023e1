//go:build !linux

package graph

import "os"

func tempFile(dir string) (*os.File, error) { return unlinkedTemp(dir) }
