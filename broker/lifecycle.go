package broker

import (
	"context"
	"errors"
	"sync"
)

var errClosed = errors.New("broker is shutting down")

// lifecycle tracks the broker's background goroutines so that Close can
// stop them and wait.
type lifecycle struct {
	ctx    context.Context // cancelled by close
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func newLifecycle() *lifecycle {
	ctx, cancel := context.WithCancel(context.Background())
	return &lifecycle{ctx: ctx, cancel: cancel}
}

// goFunc runs f in a goroutine unless closing; it reports whether it did.
func (l *lifecycle) goFunc(f func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Go(f)
	return true
}

func (l *lifecycle) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
}
