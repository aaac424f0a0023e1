package config

import (
	"fmt"
	"io"
	"os"
)

// maxFileSize bounds what is read from files the configuration names; a
// secret, a certificate chain or a key is far smaller.
const maxFileSize = 1 << 20

// readSmallFile reads a regular file. It refuses devices and pipes, which
// could block or never end, without opening them.
func readSmallFile(path string) ([]byte, os.FileInfo, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > maxFileSize {
		return nil, nil, fmt.Errorf("%s is larger than %d bytes", path, maxFileSize)
	}
	return data, info, nil
}
