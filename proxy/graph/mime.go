package graph

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strconv"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// maxDepth bounds the nesting of multiparts that is walked.
const maxDepth = 20

// leaf is a part of the message that is not a multipart, as the scan
// found it.
type leaf struct {
	path        string // "0.2.1": the part's index at each level
	contentType string // media type
	name        string
	contentID   string // without angle brackets
	inline      bool
	body        bool  // one of the message's bodies (first text/plain, first text/html)
	raw         int64 // bytes of header and body as encoded in the message
	size        int64 // decoded bytes
	action      action
}

type action int

const (
	keep   action = iota // stays in the message (the MIME draft)
	upload               // attached through an upload session
	attach               // attached with one POST (fits a request)
)

// scan is what the first pass learns about a message.
type scan struct {
	header     textproto.Header // top level
	messageID  string           // with angle brackets; "" when it has none
	to, cc     []*mail.Address
	bcc        []*mail.Address
	headerRcpt bool // the header's addresses could all be parsed
	leaves     []*leaf
}

// scanMessage walks the message once: its header's addresses and
// Message-ID, and each leaf part's kind and decoded size.
func scanMessage(r io.Reader) (*scan, error) {
	g := guardMessage(r)
	br := bufio.NewReaderSize(g, 16<<10)
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return nil, fmt.Errorf("reading the message header: %w", g.check(err))
	}
	sc := &scan{header: h, headerRcpt: true}
	mh := mail.Header{Header: message.Header{Header: h}}
	if id, err := mh.MessageID(); err == nil && id != "" {
		sc.messageID = "<" + id + ">"
	}
	for _, f := range []struct {
		key string
		out *[]*mail.Address
	}{{"To", &sc.to}, {"Cc", &sc.cc}, {"Bcc", &sc.bcc}} {
		list, err := mh.AddressList(f.key)
		if err != nil {
			sc.headerRcpt = false
			continue
		}
		*f.out = list
	}
	var gotText, gotHTML bool
	err = walk(h, br, "", 0, func(l *leaf, h textproto.Header, body io.Reader) error {
		n, err := io.Copy(io.Discard, decoder(h, body))
		if err != nil {
			return err
		}
		l.size = n
		var hdr countWriter
		textproto.WriteHeader(&hdr, h)
		l.raw += int64(hdr)
		switch {
		case l.path == "":
			l.body = true // a message that is a single part: all body
		case l.contentType == "text/plain" && !l.isAttachment(h) && !gotText:
			l.body, gotText = true, true
		case l.contentType == "text/html" && !l.isAttachment(h) && !gotHTML:
			l.body, gotHTML = true, true
		}
		sc.leaves = append(sc.leaves, l)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sc, nil
}

// isAttachment: the part is marked as an attachment, or has a file name.
func (l *leaf) isAttachment(h textproto.Header) bool {
	disp, _, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	return disp == "attachment" || l.name != ""
}

// walk calls visit for each leaf part of an entity whose header h has been
// read from body, in order, with the part's raw body. Multiparts are
// walked into; message/rfc822 parts are leaves.
func walk(h textproto.Header, body io.Reader, path string, depth int, visit func(*leaf, textproto.Header, io.Reader) error) error {
	mh := message.Header{Header: h}
	ct, params, err := mh.ContentType()
	if err != nil || ct == "" {
		ct, params = "text/plain", nil
	}
	if strings.HasPrefix(ct, "multipart/") && params["boundary"] != "" && depth < maxDepth {
		g := guardParts(body, params["boundary"])
		mr := textproto.NewMultipartReader(g, params["boundary"])
		for i := 0; ; i++ {
			p, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				return g.check(nil)
			}
			if err != nil {
				return fmt.Errorf("reading part %s: %w", join(path, i), g.check(err))
			}
			if err := walk(p.Header, p, join(path, i), depth+1, visit); err != nil {
				return g.check(err)
			}
		}
	}
	l := &leaf{path: path, contentType: ct}
	disp, dparams, _ := mh.ContentDisposition()
	l.name = dparams["filename"]
	if l.name == "" {
		l.name = params["name"]
	}
	l.contentID = strings.Trim(strings.TrimSpace(h.Get("Content-Id")), "<>")
	l.inline = disp == "inline" || (disp == "" && l.contentID != "")
	cr := &countReader{r: body}
	if err := visit(l, h, cr); err != nil {
		return err
	}
	// Whatever visit left unread is read here, so that the caller's
	// multipart reader finds the next part.
	_, err = io.Copy(io.Discard, cr)
	l.raw += cr.n
	return err
}

func join(path string, i int) string {
	if path == "" {
		return strconv.Itoa(i)
	}
	return path + "." + strconv.Itoa(i)
}

// decoder undoes a part's Content-Transfer-Encoding: base64 and
// quoted-printable; other encodings are the bytes themselves. No charset
// is converted: an attachment keeps its bytes.
func decoder(h textproto.Header, body io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &base64Cleaner{r: body})
	case "quoted-printable":
		return quotedprintable.NewReader(body)
	}
	return body
}

// base64Cleaner drops what is not base64 (line breaks, spaces), as
// RFC 2045 §6.8 says a decoder must.
type base64Cleaner struct{ r io.Reader }

func (c *base64Cleaner) Read(p []byte) (int, error) {
	for {
		n, err := c.r.Read(p)
		j := 0
		for _, b := range p[:n] {
			if b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '+' || b == '/' || b == '=' {
				p[j] = b
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

// writeDraft writes the message without the parts whose action is not
// keep: the MIME form of the draft. Parts that are kept go out as they
// came, header and body byte for byte; a multipart whose every part was
// taken out keeps an empty text part, as a multipart must have one.
func writeDraft(w io.Writer, r io.Reader, prefix string, actions map[string]action) error {
	g := guardMessage(r)
	br := bufio.NewReaderSize(g, 16<<10)
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return g.check(err)
	}
	if _, err := io.WriteString(w, prefix); err != nil {
		return err
	}
	return writeEntity(w, h, br, "", 0, actions)
}

func writeEntity(w io.Writer, h textproto.Header, body io.Reader, path string, depth int, actions map[string]action) error {
	if err := textproto.WriteHeader(w, h); err != nil {
		return err
	}
	mh := message.Header{Header: h}
	ct, params, err := mh.ContentType()
	if err != nil || !strings.HasPrefix(ct, "multipart/") || params["boundary"] == "" || depth >= maxDepth {
		_, err := io.Copy(w, body)
		return err
	}
	boundary := params["boundary"]
	g := guardParts(body, boundary)
	mr := textproto.NewMultipartReader(g, boundary)
	written := 0
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			if err := g.check(nil); err != nil {
				return err
			}
			break
		}
		if err != nil {
			return g.check(err)
		}
		sub := join(path, i)
		if a, ok := actions[sub]; ok && a != keep {
			if _, err := io.Copy(io.Discard, p); err != nil {
				return g.check(err)
			}
			continue
		}
		if _, err := io.WriteString(w, "--"+boundary+"\r\n"); err != nil {
			return err
		}
		if err := writeEntity(w, p.Header, p, sub, depth+1, actions); err != nil {
			return g.check(err)
		}
		if _, err := io.WriteString(w, "\r\n"); err != nil {
			return err
		}
		written++
	}
	if written == 0 {
		if _, err := io.WriteString(w, "--"+boundary+"\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\r\n"); err != nil {
			return err
		}
	}
	_, err = io.WriteString(w, "--"+boundary+"--\r\n")
	return err
}

// visitLeaves walks the message again and calls visit with each leaf
// whose action is not keep, and its decoded body.
func visitLeaves(r io.Reader, actions map[string]action, visit func(path string, body io.Reader) error) error {
	g := guardMessage(r)
	br := bufio.NewReaderSize(g, 16<<10)
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return g.check(err)
	}
	return walk(h, br, "", 0, func(l *leaf, h textproto.Header, body io.Reader) error {
		if a, ok := actions[l.path]; !ok || a == keep {
			return nil
		}
		return visit(l.path, decoder(h, body))
	})
}
