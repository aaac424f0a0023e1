package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A spliced session relays bytes both ways untouched once logged in, IMAP
// and POP3 alike. Thousands of IMAP sessions sit in IDLE all day, so an
// idle direction must hold little memory: none on a plain socket (see
// socketReader), a small buffer on TLS (bufferedReader); a large pooled
// buffer only while bytes flow.
const (
	// spliceSmallBuffer is what an idle TLS direction holds: an IMAP
	// untagged response or a short command fits.
	spliceSmallBuffer = 512
	// spliceLargeBuffer holds two full TLS records: one read or write per
	// record while a message flows.
	spliceLargeBuffer = 32 << 10
	// spliceLargeHold bounds how long a read may block holding a large
	// buffer: when traffic stops, the buffer goes back to the pool.
	spliceLargeHold = time.Second
	// spliceLinger bounds how long upstream may take to answer after the
	// client closed its side (typically the reply to LOGOUT).
	spliceLinger = 5 * time.Second
)

var spliceBuffers = sync.Pool{New: func() any { return new([spliceLargeBuffer]byte) }}

// RunOnOwnStack runs f on a goroutine of its own and waits for it; a panic
// in f panics the caller, with f's stack. A session runs its dialogue
// before the splice so: that dialogue grows a deep stack (TLS handshakes,
// the login, logging), and on the session's goroutine the stack would stay
// twice the size the splice needs for as long as the session lasts, since
// the runtime halves a stack only while less than a quarter of it is in
// use.
func RunOnOwnStack(f func()) {
	var p *stackPanic
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				p = &stackPanic{value: r, stack: debug.Stack()}
			}
		}()
		f()
	}()
	<-done
	if p != nil {
		panic(p)
	}
}

// stackPanic is a panic of RunOnOwnStack's f, raised again in its caller.
type stackPanic struct {
	value any
	stack []byte
}

func (p *stackPanic) String() string {
	return fmt.Sprintf("%v (on its own goroutine: %s)", p.value, p.stack)
}

// SpliceStats describes a finished splice.
type SpliceStats struct {
	// Up and Down count the bytes client→upstream and upstream→client.
	Up, Down int64
	// Reason says why the splice ended, for the log.
	Reason string
	// Drained is set when the splice ended on SpliceOptions.Drain, at a
	// quiet point, with the Bye (if any) written to the client.
	Drained bool
}

// Tracker follows a spliced protocol's two streams, so that a drain can
// end the session where the client loses nothing. The splice calls it
// under one lock, with every byte of each direction in order, before the
// bytes are relayed.
type Tracker interface {
	// Client sees bytes from the client, Upstream bytes from upstream.
	Client(p []byte)
	Upstream(p []byte)
	// Quiet reports whether a goodbye written now, after the upstream
	// bytes seen so far, cuts nothing: upstream is between responses and
	// the client waits for no answer it needs.
	Quiet() bool
}

// SpliceOptions are Splice's arguments, with an optional drain.
type SpliceOptions struct {
	Client          net.Conn
	ClientPending   []byte
	Upstream        net.Conn
	UpstreamPending []byte
	// CloseAll closes both connections.
	CloseAll func()
	Log      *slog.Logger
	// Drain, once done, asks the session to end as soon as Tracker is
	// Quiet: then Bye (a line without CRLF; empty: nothing) is written to
	// the client, upstream is closed, and the client's last bytes are read and
	// dropped for a moment so that its kernel does not reset the goodbye
	// away. Nil: no drain. Tracker is required with Drain.
	Drain   context.Context
	Tracker Tracker
	Bye     string
}

// Splice relays client and upstream until either ends, after first sending
// the bytes each side's pre-login reader had already buffered. closeAll
// closes both connections. A panic in the goroutine splice starts is logged
// to log and ends the session.
func Splice(client net.Conn, clientPending []byte, upstream net.Conn, upstreamPending []byte, closeAll func(), log *slog.Logger) SpliceStats {
	return SpliceWith(&SpliceOptions{Client: client, ClientPending: clientPending, Upstream: upstream,
		UpstreamPending: upstreamPending, CloseAll: closeAll, Log: log})
}

// SpliceWith is Splice with options: see SpliceOptions.
func SpliceWith(o *SpliceOptions) SpliceStats {
	client, upstream, closeAll, log := o.Client, o.Upstream, o.CloseAll, o.Log
	var (
		once   sync.Once
		reason string
	)
	end := func(r string) { once.Do(func() { reason = r }) }

	var dr *drain
	var upHooks, downHooks *relayHooks
	if o.Drain != nil && o.Tracker != nil {
		dr = &drain{tracker: o.Tracker, client: client, upstream: upstream, bye: o.Bye}
		upHooks, downHooks = dr.hooks()
		stop := context.AfterFunc(o.Drain, func() {
			dr.requested.Store(true)
			// Wakes the upstream read, which then looks for a quiet point.
			upstream.SetReadDeadline(time.Now())
		})
		defer stop()
	}

	down := make(chan int64, 1)
	go func() {
		var n int64
		drained := false
		defer func() { down <- n }()
		defer func() {
			if drained {
				// The goodbye is out: the client reads it and closes
				// first, within the linger.
				time.AfterFunc(lingerAfterBye, closeAll)
				return
			}
			closeAll()
		}()
		defer func() {
			if r := recover(); r != nil {
				end(fmt.Sprintf("panic: %v", r))
				log.Error("session panic", "panic", r, "stack", string(debug.Stack()))
			}
		}()
		var rerr, werr error
		n, rerr, werr = relayWith(client, upstream, o.UpstreamPending, downHooks)
		switch {
		case errors.Is(rerr, errDrained):
			drained = true
			end(reasonDrained)
		case werr != nil:
			end("client write: " + werr.Error())
		case rerr != nil:
			end("upstream read: " + rerr.Error())
		default:
			end("upstream closed")
		}
	}()

	up, rerr, werr := relayWith(upstream, client, o.ClientPending, upHooks)
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
	st := SpliceStats{Up: up, Down: <-down, Reason: reason}
	if dr != nil && dr.ended.Load() {
		closeAll()
		// The drain ended the session, whichever side then saw the other
		// close first.
		st.Drained, st.Reason = true, reasonDrained
	}
	return st
}

// reasonDrained is the end of a session that a drain closed at a quiet
// point, after the goodbye if the protocol has one.
const reasonDrained = "drained at a quiet point"

// lingerAfterBye bounds how long a session ending with a final reply
// (a drain's goodbye, a refusal) waits for the client to close first, and
// lingerMaxBytes how much of what the client still sends it discards
// meanwhile.
const (
	lingerAfterBye = 2 * time.Second
	lingerMaxBytes = 4 << 20
)

// CloseAfterFinalReply half-closes c and discards what the client is still
// sending for a moment: closing a socket with unread bytes makes the
// kernel answer with a reset, which can destroy the reply still in flight.
func CloseAfterFinalReply(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(lingerAfterBye))
	io.CopyN(io.Discard, c, lingerMaxBytes)
}

// errDrained ends the upstream→client relay once the goodbye is written.
var errDrained = errors.New("drained")

// drain is a spliced session's drain: requested by SpliceOptions.Drain,
// ended once the goodbye is written.
type drain struct {
	tracker          Tracker
	client, upstream net.Conn
	bye              string

	requested atomic.Bool
	ended     atomic.Bool
	// mu orders the tracker's calls, and the decision to end against the
	// client's bytes: a command the tracker has seen is never cut, and
	// none is relayed after the decision.
	mu sync.Mutex
}

func (d *drain) hooks() (up, down *relayHooks) {
	up = &relayHooks{data: func(p []byte) bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.ended.Load() {
			return false // the session is over: nothing more goes upstream
		}
		d.tracker.Client(p)
		return true
	}}
	down = &relayHooks{
		data: func(p []byte) bool {
			d.mu.Lock()
			d.tracker.Upstream(p)
			d.mu.Unlock()
			return true
		},
		stop:     d.stopAtQuiet,
		draining: d.requested.Load,
	}
	return up, down
}

// stopAtQuiet ends the session with the goodbye if a drain is requested
// and the tracker is quiet. It runs in the upstream→client relay, the only
// writer to the client.
func (d *drain) stopAtQuiet() bool {
	if !d.requested.Load() {
		return false
	}
	d.mu.Lock()
	quiet := d.tracker.Quiet()
	if quiet {
		d.ended.Store(true)
	}
	d.mu.Unlock()
	if !quiet {
		return false
	}
	if d.bye != "" {
		d.client.SetWriteDeadline(time.Now().Add(lingerAfterBye))
		io.WriteString(d.client, d.bye+"\r\n")
	}
	if cw, ok := d.client.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	rawConn(d.upstream).Close()
	return true
}

// relayHooks let a drain watch one direction of a splice; nil fields do
// nothing.
type relayHooks struct {
	// data sees each chunk read before it is written; false drops it.
	data func(p []byte) bool
	// stop is asked before each read whether to end the relay (errDrained).
	stop func() bool
	// draining reports whether a read deadline may be the drain's wake-up.
	draining func() bool
}

// relay writes pending, then copies src to dst until src ends (rerr nil) or
// either fails. Every read is written at once: responses must not wait.
func relay(dst io.Writer, src net.Conn, pending []byte) (n int64, rerr, werr error) {
	return relayWith(dst, src, pending, nil)
}

func relayWith(dst io.Writer, src net.Conn, pending []byte, h *relayHooks) (n int64, rerr, werr error) {
	if h == nil {
		h = &relayHooks{}
	}
	write := func(p []byte) error {
		if h.data != nil && !h.data(p) {
			return nil
		}
		w, err := dst.Write(p)
		n += int64(w)
		return err
	}
	if len(pending) > 0 {
		if err := write(pending); err != nil {
			return n, nil, err
		}
	}
	r := newChunkReader(src)
	defer r.release()
	woken := false
	for {
		if h.stop != nil && h.stop() {
			return n, errDrained, nil
		}
		if woken {
			// The drain's wake-up found no quiet point: read on, without
			// its deadline, until the next response ends.
			woken = false
			r.rearm()
		}
		p, err := r.next()
		if len(p) > 0 {
			if err := write(p); err != nil {
				return n, nil, err
			}
		}
		if err != nil {
			if IsTimeout(err) && h.draining != nil && h.draining() {
				woken = true
				continue
			}
			if err == io.EOF {
				return n, nil, nil
			}
			return n, err, nil
		}
	}
}

// chunkReader reads one direction of a splice. next blocks until bytes
// come (or an error) and returns them in a buffer valid until the next
// call; a read deadline other than its own fails next with a timeout.
// rearm clears that deadline; release gives the buffers back.
type chunkReader interface {
	next() ([]byte, error)
	rearm()
	release()
}

// newChunkReader reads a plain socket straight into pooled buffers, and
// anything else (TLS) through a small buffer that borrows a large one
// while reads keep filling it.
func newChunkReader(src net.Conn) chunkReader {
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			r := &socketReader{conn: src, rc: rc}
			r.readFn = r.read
			return r
		}
	}
	return &bufferedReader{src: src}
}

// socketReader waits for a socket to be readable holding no buffer, and
// reads it with one system call into a pooled buffer, kept while reads
// keep finding bytes and given back when one would block.
type socketReader struct {
	conn   net.Conn
	rc     syscall.RawConn
	readFn func(fd uintptr) bool // r.read, bound once
	buf    *[spliceLargeBuffer]byte
	n      int
	err    error
}

func (r *socketReader) next() ([]byte, error) {
	if err := r.rc.Read(r.readFn); err != nil {
		return nil, err // a deadline, or the connection closed
	}
	if r.err == nil && r.n > 0 {
		return r.buf[:r.n], nil
	}
	r.release()
	if r.err != nil {
		return nil, &net.OpError{Op: "read", Net: r.conn.LocalAddr().Network(), Source: r.conn.LocalAddr(),
			Addr: r.conn.RemoteAddr(), Err: os.NewSyscallError("read", r.err)}
	}
	return nil, io.EOF
}

// read is the RawConn's callback: false means "would block, wait".
func (r *socketReader) read(fd uintptr) bool {
	if r.buf == nil {
		r.buf = spliceBuffers.Get().(*[spliceLargeBuffer]byte)
	}
	for {
		r.n, r.err = syscall.Read(int(fd), r.buf[:])
		if r.err != syscall.EINTR {
			break
		}
	}
	if r.err == syscall.EAGAIN {
		r.release()
		return false
	}
	return true
}

func (r *socketReader) rearm() { r.conn.SetReadDeadline(time.Time{}) }

func (r *socketReader) release() {
	if r.buf != nil {
		spliceBuffers.Put(r.buf)
		r.buf = nil
	}
}

// bufferedReader reads a connection that may hold bytes of its own (a
// TLS record already decrypted) into a small buffer, and into a pooled
// large one while reads fill the small one. A read holding the large
// buffer is bounded by spliceLargeHold, after which it goes back.
type bufferedReader struct {
	src   net.Conn
	small [spliceSmallBuffer]byte
	large *[spliceLargeBuffer]byte
}

func (r *bufferedReader) next() ([]byte, error) {
	if r.large == nil {
		m, err := r.src.Read(r.small[:])
		if err == nil && m == len(r.small) {
			// Bytes keep coming: the next reads take the large buffer.
			r.large = spliceBuffers.Get().(*[spliceLargeBuffer]byte)
			r.src.SetReadDeadline(time.Now().Add(spliceLargeHold))
		}
		return r.small[:m], err
	}
	m, err := r.src.Read(r.large[:])
	if err == nil && m > len(r.small) {
		m = r.gather(m)
	}
	switch {
	case m == 0 && IsTimeout(err):
		// The hold deadline, or a drain's wake-up: traffic stopped, the
		// large buffer goes back, and the relay asks the drain before
		// reading on.
		r.release()
		return nil, nil
	case err == nil && m <= len(r.small):
		// Traffic slowed down: the next reads take the small buffer.
		p := append(r.small[:0], r.large[:m]...)
		r.release()
		return p, nil
	}
	return r.large[:m], err
}

// gather appends to large[:m] what src holds already, decrypted or
// received, without waiting for more: a TLS read returns one record at
// most, and a client then gets fewer, larger writes. It renews the hold
// deadline, which thus runs from the last bytes read.
func (r *bufferedReader) gather(m int) int {
	if r.src.SetReadDeadline(longAgo) != nil {
		return m // without a deadline, a read could wait holding m bytes
	}
	for m < len(r.large) {
		k, err := r.src.Read(r.large[m:])
		m += k
		if err != nil {
			// A timeout (nothing more at hand) leaves the TLS connection
			// as it was; another error is the connection's for good, and
			// the next read returns it.
			break
		}
	}
	r.src.SetReadDeadline(time.Now().Add(spliceLargeHold))
	return m
}

func (r *bufferedReader) rearm() {
	if r.large == nil {
		r.src.SetReadDeadline(time.Time{})
	}
}

func (r *bufferedReader) release() {
	if r.large != nil {
		spliceBuffers.Put(r.large)
		r.large = nil
		r.src.SetReadDeadline(time.Time{})
	}
}
