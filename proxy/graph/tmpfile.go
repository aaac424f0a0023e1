package graph

import "os"

// unlinkedTemp creates a file readable by broker's user only and removes
// its name at once.
func unlinkedTemp(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "broker-graph-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
