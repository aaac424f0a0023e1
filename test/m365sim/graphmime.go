package m365sim

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
)

var imapAppendSeen = imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen}}

func errMIME(format string, args ...any) *GraphError {
	return errGraphBadRequest("ErrorMimeContentInvalid", "The MIME content is invalid: "+format, args...)
}

var wordDecoder = &mime.WordDecoder{CharsetReader: func(charset string, input io.Reader) (io.Reader, error) {
	return input, nil // bytes as they are: tests use UTF-8
}}

// parseMIMEItem converts a MIME message into a message item as Exchange
// does: From, To, Cc, Bcc, Reply-To, Subject, Message-ID and the X-
// header fields become properties; the first text/plain and text/html
// parts that are not attachments become the bodies; every other leaf
// part becomes an attachment (inline when it has a Content-ID and is not
// marked as an attachment).
func parseMIMEItem(raw []byte) (*graphItem, *GraphError) {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, errMIME("%v", err)
	}
	h := msg.Header
	it := &graphItem{}
	it.subject, _ = wordDecoder.DecodeHeader(h.Get("Subject"))
	addrs := func(name string) ([]graphAddress, *GraphError) {
		if h.Get(name) == "" {
			return nil, nil
		}
		list, err := h.AddressList(name)
		if err != nil {
			return nil, errMIME("%s: %v", name, err)
		}
		out := make([]graphAddress, len(list))
		for i, a := range list {
			out[i] = graphAddress{Name: a.Name, Address: a.Address}
		}
		return out, nil
	}
	var f *GraphError
	from, f := addrs("From")
	if f != nil {
		return nil, f
	}
	if len(from) > 0 {
		it.from = &from[0]
	}
	if it.to, f = addrs("To"); f != nil {
		return nil, f
	}
	if it.cc, f = addrs("Cc"); f != nil {
		return nil, f
	}
	if it.bcc, f = addrs("Bcc"); f != nil {
		return nil, f
	}
	if it.replyTo, f = addrs("Reply-To"); f != nil {
		return nil, f
	}
	it.messageID = strings.TrimSpace(h.Get("Message-Id"))
	var names []string
	for name := range h {
		if strings.HasPrefix(strings.ToLower(name), "x-") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		for _, v := range h[name] {
			it.headers = append(it.headers, GraphHeader{Name: name, Value: v})
		}
	}
	var body bytes.Buffer
	if _, err := body.ReadFrom(msg.Body); err != nil {
		return nil, errMIME("%v", err)
	}
	p := &mimeParse{it: it}
	if err := p.part(textproto.MIMEHeader(h), &body, 0); err != nil {
		return nil, errMIME("%v", err)
	}
	return it, nil
}

type mimeParse struct {
	it              *graphItem
	gotText, gotHTM bool
}

func (p *mimeParse) part(h textproto.MIMEHeader, body io.Reader, depth int) error {
	if depth > 20 {
		return errors.New("MIME nesting too deep")
	}
	ctRaw := h.Get("Content-Type")
	ct, params, err := mime.ParseMediaType(ctRaw)
	if ctRaw == "" || err != nil {
		ct, params = "text/plain", map[string]string{}
	}
	disp, dparams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	if strings.HasPrefix(ct, "multipart/") {
		if params["boundary"] == "" {
			return errors.New("multipart without boundary")
		}
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextRawPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := p.part(part.Header, part, depth+1); err != nil {
				return err
			}
		}
	}
	var r io.Reader = body
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, &skipSpace{r: body})
	case "quoted-printable":
		r = quotedprintable.NewReader(body)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("decoding a %s part: %w", ct, err)
	}
	name := dparams["filename"]
	if name == "" {
		name = params["name"]
	}
	name, _ = wordDecoder.DecodeHeader(name)
	isBody := disp != "attachment" && name == ""
	switch {
	case isBody && ct == "text/plain" && !p.gotText:
		p.it.textBody, p.gotText = string(data), true
		return nil
	case isBody && ct == "text/html" && !p.gotHTM:
		p.it.htmlBody, p.gotHTM = string(data), true
		return nil
	}
	cid := strings.Trim(strings.TrimSpace(h.Get("Content-Id")), "<>")
	if name == "" {
		name = fmt.Sprintf("ATT%05d", len(p.it.attachments)+1)
		if ct == "message/rfc822" {
			name += ".eml"
		}
	}
	p.it.attachments = append(p.it.attachments, &graphAttachment{
		name:        name,
		contentType: ct,
		contentID:   cid,
		inline:      disp == "inline" || (disp == "" && cid != ""),
		data:        data,
		size:        int64(len(data)),
		sha:         sha256.Sum256(data),
	})
	return nil
}

// skipSpace drops the spaces and tabs a base64 body may carry at line
// ends (base64.NewDecoder skips only CR and LF).
type skipSpace struct{ r io.Reader }

func (s *skipSpace) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		if !bytes.ContainsAny(p[:n], " \t") {
			return n, err
		}
		j := 0
		for _, c := range p[:n] {
			if c != ' ' && c != '\t' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// buildMIME is the message as Exchange sends it: header fields from the
// item's properties, the bodies (multipart/alternative when both), the
// attachments in base64. withBcc is for the sender's Sent Items copy.
func buildMIME(it *graphItem, sent time.Time, withBcc bool) []byte {
	var buf bytes.Buffer
	size := int64(len(it.textBody)+len(it.htmlBody)) * 2
	for _, a := range it.attachments {
		size += a.size*4/3 + a.size/38 + 512
	}
	buf.Grow(int(size) + 4096)
	hdr := func(name, value string) { fmt.Fprintf(&buf, "%s: %s\r\n", name, value) }
	list := func(as []graphAddress) string {
		s := make([]string, len(as))
		for i, a := range as {
			s[i] = a.String()
		}
		return strings.Join(s, ",\r\n\t")
	}
	if it.from != nil {
		hdr("From", it.from.String())
	}
	if len(it.to) > 0 {
		hdr("To", list(it.to))
	}
	if len(it.cc) > 0 {
		hdr("Cc", list(it.cc))
	}
	if withBcc && len(it.bcc) > 0 {
		hdr("Bcc", list(it.bcc))
	}
	if len(it.replyTo) > 0 {
		hdr("Reply-To", list(it.replyTo))
	}
	hdr("Subject", mime.QEncoding.Encode("utf-8", it.subject))
	hdr("Thread-Topic", mime.QEncoding.Encode("utf-8", it.subject))
	hdr("Date", sent.Format(time.RFC1123Z))
	hdr("Message-ID", it.messageID)
	hasAttach := "no"
	if len(it.attachments) > 0 {
		hasAttach = "yes"
	}
	hdr("X-MS-Has-Attach", hasAttach)
	for _, h := range it.headers {
		hdr(h.Name, h.Value)
	}
	hdr("MIME-Version", "1.0")

	bodyParts := func(w *multipart.Writer) {
		if it.textBody != "" || it.htmlBody == "" {
			writeTextPart(w, "text/plain", it.textBody)
		}
		if it.htmlBody != "" {
			writeTextPart(w, "text/html", it.htmlBody)
		}
	}
	single := len(it.attachments) == 0 && (it.textBody == "" || it.htmlBody == "")
	if single {
		ct, content := "text/plain", it.textBody
		if it.htmlBody != "" {
			ct, content = "text/html", it.htmlBody
		}
		hdr("Content-Type", ct+`; charset="utf-8"`)
		hdr("Content-Transfer-Encoding", "quoted-printable")
		buf.WriteString("\r\n")
		writeQP(&buf, content)
		return buf.Bytes()
	}
	mixed := len(it.attachments) > 0
	top := multipart.NewWriter(&buf)
	top.SetBoundary(newBoundary())
	kind := "multipart/alternative"
	if mixed {
		kind = "multipart/mixed"
	}
	hdr("Content-Type", kind+`; boundary="`+top.Boundary()+`"`)
	buf.WriteString("\r\n")
	if !mixed {
		bodyParts(top)
		top.Close()
		return buf.Bytes()
	}
	if it.textBody != "" && it.htmlBody != "" {
		var alt bytes.Buffer
		aw := multipart.NewWriter(&alt)
		aw.SetBoundary(newBoundary())
		bodyParts(aw)
		aw.Close()
		pw, _ := top.CreatePart(textproto.MIMEHeader{"Content-Type": {`multipart/alternative; boundary="` + aw.Boundary() + `"`}})
		pw.Write(alt.Bytes())
	} else {
		bodyParts(top)
	}
	for _, a := range it.attachments {
		ct := a.contentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		disp := "attachment"
		if a.inline {
			disp = "inline"
		}
		h := textproto.MIMEHeader{
			"Content-Type":              {mime.FormatMediaType(ct, map[string]string{"name": a.name})},
			"Content-Description":       {mime.QEncoding.Encode("utf-8", a.name)},
			"Content-Disposition":       {mime.FormatMediaType(disp, map[string]string{"filename": a.name, "size": fmt.Sprint(a.size)})},
			"Content-Transfer-Encoding": {"base64"},
		}
		if a.contentID != "" {
			h.Set("Content-ID", "<"+a.contentID+">")
		}
		pw, _ := top.CreatePart(h)
		writeBase64Lines(pw, a.data)
	}
	top.Close()
	return buf.Bytes()
}

func writeTextPart(w *multipart.Writer, ct, content string) {
	pw, _ := w.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {ct + `; charset="utf-8"`},
		"Content-Transfer-Encoding": {"quoted-printable"},
	})
	var b bytes.Buffer
	writeQP(&b, content)
	pw.Write(b.Bytes())
}

func writeQP(w io.Writer, s string) {
	qw := quotedprintable.NewWriter(w)
	io.WriteString(qw, s)
	qw.Close()
}

// writeBase64Lines writes data in base64, 76 characters a line.
func writeBase64Lines(w io.Writer, data []byte) {
	const in = 57 // bytes per 76-character line
	line := make([]byte, 0, 78*256)
	for len(data) > 0 {
		n := min(in, len(data))
		line = base64.StdEncoding.AppendEncode(line, data[:n])
		line = append(line, '\r', '\n')
		data = data[n:]
		if len(line) > cap(line)-80 {
			w.Write(line)
			line = line[:0]
		}
	}
	w.Write(line)
}

func newBoundary() string {
	b := make([]byte, 12)
	rand.Read(b)
	return fmt.Sprintf("_000_SIM0PR01MB0001%X_", b)
}
