package main

import (
	"fmt"
	"os"
	"sync"
)

// runner is the harness.TB of a program: the harness's Fatalf panics with
// a setupError, which main recovers, and cleanups run in reverse order at
// the end or on a signal.
type runner struct {
	verbose bool
	dir     string // removed last

	mu       sync.Mutex
	cleanups []func()
	done     bool
}

// setupError is what Fatalf panics with; only the main goroutine starts
// the harness's servers, so only it can panic this way.
type setupError struct{ msg string }

func (e setupError) Error() string { return e.msg }

func newRunner(verbose bool) (*runner, error) {
	// A short path: Dovecot's and broker's unix sockets live below it.
	dir, err := os.MkdirTemp("", "bkperf")
	if err != nil {
		return nil, err
	}
	return &runner{verbose: verbose, dir: dir}, nil
}

func (r *runner) Helper() {}

func (r *runner) Fatalf(format string, args ...any) {
	panic(setupError{fmt.Sprintf(format, args...)})
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *runner) TempDir() string {
	dir, err := os.MkdirTemp(r.dir, "t")
	if err != nil {
		r.Fatalf("TempDir: %v", err)
	}
	return dir
}

func (r *runner) Logf(format string, args ...any) {
	if r.verbose {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

// progress tells what runs now, on stderr, so that a long run shows life.
func (r *runner) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "perf: "+format+"\n", args...)
}

// close runs the cleanups once, newest first, then removes the directory.
func (r *runner) close() {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	r.done = true
	cleanups := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	os.RemoveAll(r.dir)
}
