package smtp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// wireReference is wireScanner written plainly, a whole line at a time:
// the data as it goes upstream, what followed the final dot, the size
// upstream stores, and whether the final dot came or a line was too long.
func wireReference(in []byte, maxLine int) (out, rest []byte, size int64, done, tooLong bool) {
	crlfBefore := true
	for {
		i := bytes.IndexByte(in, '\n')
		if i < 0 {
			// A CR at the end may start a line end: it is not counted yet.
			return out, nil, size, false, len(bytes.TrimSuffix(in, []byte("\r"))) > maxLine
		}
		line := in[:i+1]
		in = in[i+1:]
		if len(line)-1 > maxLine {
			return out, nil, size, false, true
		}
		if crlfBefore && string(line) == ".\r\n" {
			return out, in, size, true, false
		}
		body, endsCRLF := line[:len(line)-1], false
		if n := len(body); n > 0 && body[n-1] == '\r' {
			body, endsCRLF = body[:n-1], true
		}
		// What the line means, and how it goes upstream.
		content, wire := body, body
		switch {
		case crlfBefore && strings.HasPrefix(string(body), "."):
			content = body[1:]
			if string(body) == "." {
				wire = nil
			}
		case strings.HasPrefix(string(body), "."):
			wire = append([]byte("."), body...)
		}
		out = append(append(out, wire...), "\r\n"...)
		size += int64(len(content)) + 2
		crlfBefore = endsCRLF
	}
}

// stuffReference is stuffer written plainly.
func stuffReference(in []byte) []byte {
	var out []byte
	for len(in) > 0 {
		line, next, found := bytes.Cut(in, []byte("\n"))
		in = next
		if bytes.HasPrefix(line, []byte(".")) {
			out = append(out, '.')
		}
		out = append(out, line...)
		if found {
			out = append(bytes.TrimSuffix(out, []byte("\r")), "\r\n"...)
		}
	}
	return out
}

// chunkReader returns r's bytes in reads of 1 to 17 octets, as split
// chooses.
type chunkReader struct {
	data  []byte
	split int
	n     int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	r.n++
	size := min(1+(r.n*r.split)%17, len(p), len(r.data))
	n := copy(p, r.data[:size])
	r.data = r.data[n:]
	return n, nil
}

// scanWire runs data through a wireScanner with the session's loop, in
// reads that split chooses, through a buffer of bufSize.
func scanWire(data []byte, split, bufSize int, limit int64, maxLine int) (out []byte, sc *wireScanner, rest []byte, err error) {
	var b bytes.Buffer
	sc = newWireScanner(&b, limit, maxLine)
	r := &chunkReader{data: data, split: split}
	rest, err = scanData(sc, make([]byte, bufSize), r.Read)
	rest = append(rest, r.data...)
	return b.Bytes(), sc, rest, err
}

// checkWire checks that scanning data, however it is split, gives what
// wireReference does, and that what goes upstream can never end early
// there.
func checkWire(t *testing.T, data []byte, split int, maxLine int) {
	t.Helper()
	wantOut, wantRest, wantSize, wantDone, wantLong := wireReference(data, maxLine)
	for _, bufSize := range []int{3, 7, copyBuffer} {
		out, sc, rest, err := scanWire(data, split, bufSize, 0, maxLine)
		if sc.tooLong != wantLong {
			t.Fatalf("%q, split %d, buffer %d: too long %v, want %v", data, split, bufSize, sc.tooLong, wantLong)
		}
		if wantLong {
			continue
		}
		if done := err == nil; done != wantDone {
			t.Fatalf("%q, split %d, buffer %d: done %v (%v), want %v", data, split, bufSize, done, err, wantDone)
		}
		if !wantDone {
			continue
		}
		if !bytes.Equal(out, wantOut) || !bytes.Equal(rest, wantRest) || sc.size != wantSize {
			t.Fatalf("%q, split %d, buffer %d:\ngot  %q rest %q size %d\nwant %q rest %q size %d",
				data, split, bufSize, out, rest, sc.size, wantOut, wantRest, wantSize)
		}
	}
	if !wantDone {
		return
	}
	// Upstream sees the data end only where the client's did, and only
	// CRLF line ends.
	if bytes.Contains(append([]byte("\r\n"), wantOut...), []byte("\r\n.\r\n")) {
		t.Fatalf("%q goes upstream as %q, which ends early", data, wantOut)
	}
	if bytes.Count(wantOut, []byte("\n")) != bytes.Count(wantOut, []byte("\r\n")) {
		t.Fatalf("%q goes upstream as %q, with a bare LF", data, wantOut)
	}
}

func TestWireScanner(t *testing.T) {
	tests := []struct {
		name, in, out, rest string
	}{
		{"empty message", ".\r\n", "", ""},
		{"one line", "hello\r\n.\r\n", "hello\r\n", ""},
		{"an empty line", "\r\n.\r\n", "\r\n", ""},
		{"a line of a dot, stuffed", "a\r\n..\r\nb\r\n.\r\n", "a\r\n..\r\nb\r\n", ""},
		{"lines starting with dots pass as they are", "..x\r\n.y\r\n...\r\n.\r\n", "..x\r\n.y\r\n...\r\n", ""},
		{"bare LF becomes CRLF", "a\nb\r\n.\r\n", "a\r\nb\r\n", ""},
		{"bare LF never ends the data", "a\n.\r\nb\r\n.\r\n", "a\r\n..\r\nb\r\n", ""},
		{"a dot after a bare LF is the message's own", "a\n.b\n..c\r\n.\r\n", "a\r\n..b\r\n...c\r\n", ""},
		{"a stuffing dot before a bare LF", "a\r\n.\nb\r\n.\r\n", "a\r\n\r\nb\r\n", ""},
		{"bare CRs pass", "a\rb\r\r\n.\r\n", "a\rb\r\r\n", ""},
		{"CR before the final dot line", "a\r\r\n.\r\n", "a\r\r\n", ""},
		{"dot and bare CR", ".\rx\r\n.\r\n", ".\rx\r\n", ""},
		{"no CRLF before the dot", "abc.\r\n\n.\r\nx\r\n.\r\n", "abc.\r\n\r\n..\r\nx\r\n", ""},
		{"commands after the dot", "hi\r\n.\r\nQUIT\r\n", "hi\r\n", "QUIT\r\n"},
		{"dot line with spaces", "x\r\n. \r\n.\r\n", "x\r\n. \r\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for split := 1; split <= 17; split++ {
				out, sc, rest, err := scanWire([]byte(tt.in), split, 5, 0, maxLineLength)
				if err != nil || string(out) != tt.out || string(rest) != tt.rest {
					t.Fatalf("split %d: got %q rest %q err %v, want %q rest %q", split, out, rest, err, tt.out, tt.rest)
				}
				if _, _, size, _, _ := wireReference([]byte(tt.in), maxLineLength); sc.size != size {
					t.Fatalf("split %d: size %d, want %d", split, sc.size, size)
				}
			}
			checkWire(t, []byte(tt.in), 3, maxLineLength)
		})
	}
}

func TestWireScannerUnfinished(t *testing.T) {
	for _, in := range []string{"", "abc", "abc\r\n", "abc\r\n.", "abc\r\n.\r", "abc\n.\r\n"} {
		out, _, _, err := scanWire([]byte(in), 1, 4, 0, maxLineLength)
		if err != io.EOF {
			t.Fatalf("%q: error %v, want EOF", in, err)
		}
		if want, _, _, _, _ := wireReference([]byte(in), maxLineLength); !bytes.HasPrefix(out, want) {
			t.Fatalf("%q: wrote %q, want it to start with %q", in, out, want)
		}
	}
}

func TestWireScannerLimits(t *testing.T) {
	msg := "12345678\r\n.abc\r\n" // 10 + 5 octets stored
	for _, tt := range []struct {
		limit int64
		large bool
	}{{0, false}, {14, true}, {15, false}, {16, false}} {
		_, sc, rest, err := scanWire([]byte(msg+".\r\nNOOP\r\n"), 2, 6, tt.limit, maxLineLength)
		if err != nil || sc.tooLarge != tt.large || string(rest) != "NOOP\r\n" {
			t.Fatalf("limit %d: too large %v, rest %q, err %v; want %v and the data read to its end",
				tt.limit, sc.tooLarge, rest, err, tt.large)
		}
	}
	long := strings.Repeat("x", 20)
	for _, tt := range []struct {
		in   string
		long bool
	}{{long[:19] + "\r\n.\r\n", true}, {long[:18] + "\r\n.\r\n", false}, {long[:19] + "\n.\r\n", false}} {
		_, sc, _, _ := scanWire([]byte(tt.in), 5, 64, 0, 19)
		if sc.tooLong != tt.long {
			t.Fatalf("%q with lines up to 19: too long %v", tt.in, sc.tooLong)
		}
	}
}

// failWriter fails every write after the first n octets.
type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errors.New("upstream gone")
	}
	w.n -= len(p)
	return len(p), nil
}

func TestWireScannerUpstreamFails(t *testing.T) {
	sc := newWireScanner(&failWriter{n: 3}, 0, maxLineLength)
	r := &chunkReader{data: []byte("hello\r\nworld\r\n.\r\nQUIT\r\n"), split: 3}
	rest, err := scanData(sc, make([]byte, 8), r.Read)
	if err != nil || sc.werr == nil || string(append(rest, r.data...)) != "QUIT\r\n" {
		t.Fatalf("got rest %q, err %v, write error %v; want the data read to its end and the write error", rest, err, sc.werr)
	}
}

func TestStuffer(t *testing.T) {
	for _, in := range []string{"", "a\r\n", ".\r\n", "a\n.\nb", "..x\r\n.\r", "\r\r\n\n.", "x\r"} {
		for split := 1; split <= 5; split++ {
			var b bytes.Buffer
			s := &stuffer{w: &b}
			for p := []byte(in); len(p) > 0; {
				n := min(split, len(p))
				s.Write(p[:n])
				p = p[n:]
			}
			if want := stuffReference([]byte(in)); !bytes.Equal(b.Bytes(), want) {
				t.Fatalf("%q in writes of %d: got %q, want %q", in, split, b.Bytes(), want)
			}
		}
	}
}
