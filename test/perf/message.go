package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"strings"
)

// textBlock is the text message bodies are cut from: printable, varied,
// so that a byte changed or lost on the way shows in a hash.
var textBlock = func() []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,;:-_=+/()<>[]'\"!?#%&*"
	rng := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return b
}()

// maxBodyLine keeps lines below SMTP's 998 octets: Postfix's LMTP client
// would fold longer ones, and the delivered copy would differ.
const maxBodyLine = 200

// message is a generated message: raw as the client means it, wire as it
// goes after DATA (dot-stuffed, with the final dot).
type message struct {
	id   string // Message-ID without the angle brackets
	raw  []byte
	wire []byte
	sum  [sha256.Size]byte
}

// newMessage makes a message of about size bytes from from to to. Its body
// has lines starting with a dot, a line that is only a dot, empty lines
// and trailing spaces: what dot-stuffing and line handling must keep.
func newMessage(id, from, to string, size int) *message {
	var b bytes.Buffer
	b.Grow(size + 1024)
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: broker perf %s\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\nMessage-ID: <%s>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", from, to, id, id)
	h := sha256.Sum256([]byte(id))
	rng := rand.New(rand.NewPCG(uint64(h[0])<<8|uint64(h[1]), uint64(h[2])))
	for i := 0; b.Len() < size; i++ {
		switch {
		case i%97 == 13:
			b.WriteString(".\r\n")
		case i%41 == 7:
			b.WriteString("\r\n")
		default:
			n := 20 + rng.IntN(maxBodyLine-20)
			off := rng.IntN(len(textBlock) - n)
			line := textBlock[off : off+n]
			if i%17 == 3 {
				b.WriteByte('.')
			}
			b.Write(line)
			if i%29 == 5 {
				b.WriteString("  ")
			}
			b.WriteString("\r\n")
		}
	}
	raw := b.Bytes()
	return &message{id: id, raw: raw, wire: stuff(raw), sum: sha256.Sum256(raw)}
}

// stuff dot-stuffs raw, which ends with CRLF, and appends the final dot.
func stuff(raw []byte) []byte {
	out := make([]byte, 0, len(raw)+len(raw)/64+8)
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line = raw[:i+1]
		}
		if line[0] == '.' {
			out = append(out, '.')
		}
		out = append(out, line...)
		raw = raw[len(line):]
	}
	return append(out, ".\r\n"...)
}

// traceRE matches the header lines Postfix and Dovecot put in front of a
// delivered message.
var traceRE = regexp.MustCompile(`^(?i:Return-Path|Delivered-To|Received|X-Original-To):`)

// delivered is what a fetched delivered message holds beyond its trace
// headers.
type delivered struct {
	id   string
	size int64
	sum  [sha256.Size]byte
}

// parseDelivered reads a delivered message, skips the trace headers in
// front of what was sent, and hashes the rest.
func parseDelivered(r io.Reader) (delivered, error) {
	br := bufio.NewReaderSize(r, readBuffer)
	var d delivered
	h := sha256.New()
	inTrace, inHeader := true, true
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the buffer is in the body, hashed whole.
			inTrace = false
			inHeader = false
		} else if err != nil && err != io.EOF {
			return d, err
		}
		if len(line) == 0 && err == io.EOF {
			break
		}
		if inTrace {
			if traceRE.Match(line) || (len(line) > 0 && (line[0] == ' ' || line[0] == '\t')) {
				continue
			}
			inTrace = false
		}
		if inHeader {
			if len(bytes.TrimRight(line, "\r\n")) == 0 {
				inHeader = false
			} else if v, ok := headerValue(line, "Message-ID"); ok {
				d.id = strings.Trim(v, "<> \t")
			}
		}
		d.size += int64(len(line))
		h.Write(line)
		if err == io.EOF {
			break
		}
		if err == bufio.ErrBufferFull {
			n, err := io.Copy(h, br)
			d.size += n
			if err != nil {
				return d, err
			}
			break
		}
	}
	copy(d.sum[:], h.Sum(nil))
	return d, nil
}

// headerValue returns the value of line if it is the header name.
func headerValue(line []byte, name string) (string, bool) {
	k, v, ok := bytes.Cut(line, []byte(":"))
	if !ok || !strings.EqualFold(string(k), name) {
		return "", false
	}
	return strings.TrimSpace(string(v)), true
}
