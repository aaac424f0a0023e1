package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// scriptConn is a connection whose reads return scripted sizes.
type scriptConn struct {
	net.Conn
	reads     []int // bytes per read; -1 is a deadline error
	asked     []int // buffer sizes passed to Read
	deadlines []bool
}

func (c *scriptConn) Read(b []byte) (int, error) {
	c.asked = append(c.asked, len(b))
	if len(c.reads) == 0 {
		return 0, io.EOF
	}
	n := c.reads[0]
	c.reads = c.reads[1:]
	if n < 0 {
		return 0, os.ErrDeadlineExceeded
	}
	return copy(b, bytes.Repeat([]byte{'x'}, n)), nil
}

func (c *scriptConn) SetReadDeadline(t time.Time) error {
	c.deadlines = append(c.deadlines, !t.IsZero())
	return nil
}

func TestRelayBuffers(t *testing.T) {
	const small, large = spliceSmallBuffer, spliceLargeBuffer
	tests := []struct {
		name      string
		reads     []int
		asked     []int
		deadlines []bool
	}{
		{"light traffic stays small", []int{10, 100, small - 1}, []int{small, small, small, small}, nil},
		{"a full read borrows, a short one returns",
			[]int{small, 16384, 16384, 100, 7},
			[]int{small, large, large, large, small, small},
			[]bool{true, false}},
		{"the hold deadline returns it",
			[]int{small, 16384, -1, 5},
			[]int{small, large, large, small, small},
			[]bool{true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &scriptConn{reads: tt.reads}
			var dst bytes.Buffer
			n, rerr, werr := relay(&dst, src, []byte("pending"))
			want := int64(len("pending"))
			for _, r := range tt.reads {
				want += int64(max(r, 0))
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
