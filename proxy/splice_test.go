package proxy

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scriptConn is a connection whose reads follow a script: "512" is a read
// of 512 bytes, "+512" one whose bytes are at hand as soon as the previous
// read returns (a read past its deadline gets them), "T" a deadline error.
type scriptConn struct {
	net.Conn
	script    []string
	asked     []int    // buffer sizes passed to Read
	deadlines []string // "hold" (in the future), "past", "none"
	expired   bool
}

func (c *scriptConn) Read(b []byte) (int, error) {
	c.asked = append(c.asked, len(b))
	if len(c.script) == 0 {
		if c.expired {
			return 0, os.ErrDeadlineExceeded
		}
		return 0, io.EOF
	}
	next := c.script[0]
	if c.expired && !strings.HasPrefix(next, "+") {
		return 0, os.ErrDeadlineExceeded
	}
	c.script = c.script[1:]
	if next == "T" {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := strconv.Atoi(strings.TrimPrefix(next, "+"))
	if err != nil {
		panic(err)
	}
	return copy(b, bytes.Repeat([]byte{'x'}, n)), nil
}

func (c *scriptConn) SetReadDeadline(t time.Time) error {
	switch {
	case t.IsZero():
		c.deadlines = append(c.deadlines, "none")
	case t.Before(time.Now()):
		c.deadlines = append(c.deadlines, "past")
	default:
		c.deadlines = append(c.deadlines, "hold")
	}
	c.expired = !t.IsZero() && t.Before(time.Now())
	return nil
}

func TestRelayBuffers(t *testing.T) {
	const small, large = spliceSmallBuffer, spliceLargeBuffer
	tests := []struct {
		name      string
		script    string
		asked     []int
		deadlines []string
	}{
		{"light traffic stays small", "10 100 511", []int{small, small, small, small}, nil},
		{"a full read borrows, gathers what is at hand, a short one returns",
			"512 16384 +1000 100 7",
			[]int{small, large, large - 16384, large - 17384, large, small, small},
			[]string{"hold", "past", "hold", "none"}},
		{"gathering stops at a full buffer",
			"512 16384 +16384 +16384 7",
			[]int{small, large, large - 16384, large, large - 16384, large, small},
			[]string{"hold", "past", "hold", "past", "hold", "none"}},
		{"the hold deadline returns it",
			"512 16384 T 5",
			[]int{small, large, large - 16384, large, small, small},
			[]string{"hold", "past", "hold", "none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &scriptConn{script: strings.Fields(tt.script)}
			var dst bytes.Buffer
			n, rerr, werr := relay(&dst, src, []byte("pending"))
			want := int64(len("pending"))
			for _, r := range strings.Fields(tt.script) {
				if r != "T" {
					k, _ := strconv.Atoi(strings.TrimPrefix(r, "+"))
					want += int64(k)
				}
			}
			if n != want || int64(dst.Len()) != want || rerr != nil || werr != nil {
				t.Fatalf("relay: got %d (%d written), %v, %v; want %d", n, dst.Len(), rerr, werr, want)
			}
			if !reflect.DeepEqual(src.asked, tt.asked) {
				t.Fatalf("read sizes: got %v, want %v", src.asked, tt.asked)
			}
			if !reflect.DeepEqual(src.deadlines, tt.deadlines) {
				t.Fatalf("deadlines set: got %v, want %v", src.deadlines, tt.deadlines)
			}
		})
	}
}

// panicConn panics on Write.
type panicConn struct{ net.Conn }

func (panicConn) Write([]byte) (int, error) { panic("write panic") }

func TestSplicePanicRecovered(t *testing.T) {
	client, clientPeer := net.Pipe()
	upstream, upstreamPeer := net.Pipe()
	closeAll := func() {
		client.Close()
		upstream.Close()
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	done := make(chan SpliceStats)
	go func() {
		done <- Splice(panicConn{client}, nil, upstream, []byte("* OK\r\n"), closeAll, log)
	}()
	st := <-done
	clientPeer.Close()
	upstreamPeer.Close()
	if !strings.HasPrefix(st.Reason, "panic: write panic") || !strings.Contains(logs.String(), "session panic") {
		t.Fatalf("got reason %q and log %q, want the panic", st.Reason, logs.String())
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept() // nil on failure: Dial fails too
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

// A socket is read without a buffer while it has nothing to read: the
// relay waits for data holding no memory.
func TestSocketReaderWaitsWithoutBuffer(t *testing.T) {
	a, b := tcpPair(t)
	r, ok := newChunkReader(b).(*socketReader)
	if !ok {
		t.Fatalf("a TCP connection is read by %T, want *socketReader", newChunkReader(b))
	}
	defer r.release()
	b.SetReadDeadline(time.Now())
	if p, err := r.next(); !IsTimeout(err) || len(p) != 0 || r.buf != nil {
		t.Fatalf("idle read: got %q, %v, buffer held %v; want a timeout without a buffer", p, err, r.buf != nil)
	}
	b.SetReadDeadline(time.Time{})
	if _, err := a.Write([]byte("a1 NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	if p, err := r.next(); string(p) != "a1 NOOP\r\n" || err != nil {
		t.Fatalf("got %q, %v", p, err)
	}
	a.Close()
	if p, err := r.next(); err != io.EOF || len(p) != 0 || r.buf != nil {
		t.Fatalf("after close: got %q, %v, buffer held %v; want EOF without a buffer", p, err, r.buf != nil)
	}
}

// Both kinds of reader relay every byte, in order, and count them.
func TestRelayCopiesEverything(t *testing.T) {
	data := make([]byte, 3<<20+12345)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, kind := range []string{"tcp", "pipe"} {
		t.Run(kind, func(t *testing.T) {
			var src, peer net.Conn
			if kind == "tcp" {
				peer, src = tcpPair(t)
			} else {
				peer, src = net.Pipe()
				defer peer.Close()
				defer src.Close()
			}
			written := make(chan error, 1)
			go func() {
				// Uneven writes: some fill a buffer, some do not.
				p := data
				for i := 0; len(p) > 0; i++ {
					n := min(len(p), []int{1, 511, 512, 513, 40000, 7}[i%6])
					if _, err := peer.Write(p[:n]); err != nil {
						written <- err
						return
					}
					p = p[n:]
				}
				written <- peer.Close()
			}()
			var dst bytes.Buffer
			n, rerr, werr := relay(&dst, src, []byte("pending"))
			if err := <-written; err != nil {
				t.Fatal(err)
			}
			want := append([]byte("pending"), data...)
			if rerr != nil || werr != nil || n != int64(len(want)) || !bytes.Equal(dst.Bytes(), want) {
				t.Fatalf("got %d bytes (%d counted), %v, %v; want %d, equal", dst.Len(), n, rerr, werr, len(want))
			}
		})
	}
}

func TestRunOnOwnStackPanics(t *testing.T) {
	ran := false
	RunOnOwnStack(func() { ran = true })
	if !ran {
		t.Fatal("f did not run")
	}
	defer func() {
		r := recover()
		if s := fmt.Sprint(r); !strings.Contains(s, "login broke") || !strings.Contains(s, "TestRunOnOwnStackPanics") {
			t.Fatalf("got panic %q, want f's, with its stack", s)
		}
	}()
	RunOnOwnStack(func() { panic("login broke") })
	t.Fatal("no panic")
}
