package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"
)

// A spliced session relays bytes both ways untouched once logged in, IMAP
// and POP3 alike. Thousands of IMAP sessions sit in IDLE all day, so an
// idle direction must hold little memory: it reads into a small buffer,
// and borrows a large pooled one only while reads keep filling the small
// one.
const (
	spliceSmallBuffer = 2 << 10
	spliceLargeBuffer = 32 << 10
	// spliceLargeHold bounds how long a read may block holding a large
	// buffer: when traffic stops, the buffer goes back to the pool.
	spliceLargeHold = time.Second
	// spliceLinger bounds how long upstream may take to answer after the
	// client closed its side (typically the reply to LOGOUT).
	spliceLinger = 5 * time.Second
)

var spliceBuffers = sync.Pool{New: func() any { return new([spliceLargeBuffer]byte) }}

// SpliceStats describes a finished splice.
type SpliceStats struct {
	// Up and Down count the bytes client→upstream and upstream→client.
	Up, Down int64
	// Reason says why the splice ended, for the log.
	Reason string
}

// Splice relays client and upstream until either ends, after first sending
// the bytes each side's pre-login reader had already buffered. closeAll
// closes both connections. A panic in the goroutine splice starts is logged
// to log and ends the session.
func Splice(client net.Conn, clientPending []byte, upstream net.Conn, upstreamPending []byte, closeAll func(), log *slog.Logger) SpliceStats {
	var (
		once   sync.Once
		reason string
	)
	end := func(r string) { once.Do(func() { reason = r }) }

	down := make(chan int64, 1)
	go func() {
		var n int64
		defer func() { down <- n }()
		defer closeAll()
		defer func() {
			if r := recover(); r != nil {
				end(fmt.Sprintf("panic: %v", r))
				log.Error("session panic", "panic", r, "stack", string(debug.Stack()))
			}
		}()
		var rerr, werr error
		n, rerr, werr = relay(client, upstream, upstreamPending)
		switch {
		case werr != nil:
			end("client write: " + werr.Error())
		case rerr != nil:
			end("upstream read: " + rerr.Error())
		default:
			end("upstream closed")
		}
	}()

	up, rerr, werr := relay(upstream, client, clientPending)
	switch {
	case werr != nil:
		end("upstream write: " + werr.Error())
		closeAll()
	case rerr != nil:
		end("client read: " + rerr.Error())
		closeAll()
	default:
		end("client closed")
		// Let upstream finish answering what the client sent last.
		t := time.AfterFunc(spliceLinger, closeAll)
		defer t.Stop()
		if cw, ok := upstream.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			closeAll()
		}
	}
	return SpliceStats{Up: up, Down: <-down, Reason: reason}
}

// relay writes pending, then copies src to dst until src ends (rerr nil) or
// either fails. Every read is written at once: responses must not wait.
func relay(dst io.Writer, src net.Conn, pending []byte) (n int64, rerr, werr error) {
	if len(pending) > 0 {
		w, err := dst.Write(pending)
		n += int64(w)
		if err != nil {
			return n, nil, err
		}
	}
	small := make([]byte, spliceSmallBuffer)
	var large *[spliceLargeBuffer]byte
	release := func() {
		spliceBuffers.Put(large)
		large = nil
		src.SetReadDeadline(time.Time{})
	}
	defer func() {
		if large != nil {
			spliceBuffers.Put(large)
		}
	}()
	for {
		buf := small
		if large != nil {
			buf = large[:]
		}
		m, err := src.Read(buf)
		if m > 0 {
			w, err := dst.Write(buf[:m])
			n += int64(w)
			if err != nil {
				return n, nil, err
			}
		}
		if err != nil {
			if large != nil && IsTimeout(err) {
				// The hold deadline: traffic stopped.
				release()
				continue
			}
			if err == io.EOF {
				return n, nil, nil
			}
			return n, err, nil
		}
		switch {
		case large == nil && m == len(small):
			large = spliceBuffers.Get().(*[spliceLargeBuffer]byte)
			src.SetReadDeadline(time.Now().Add(spliceLargeHold))
		case large != nil && m <= len(small):
			release()
		}
	}
}
