package graph

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
)

func multipartMessage(partHeader string) string {
	return "From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n" +
		"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n" +
		"preamble\r\n--outer\r\nContent-Type: text/plain\r\n\r\nhello\r\n" +
		"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n" +
		"--inner\r\n" + partHeader + "Content-Type: text/html\r\n\r\n<p>hi</p>\r\n--inner--\r\n" +
		"\r\n--outer--\r\nepilogue\r\n"
}

func TestHeaderLimits(t *testing.T) {
	long := "X-Long: " + strings.Repeat("a", maxHeaderBytes) + "\r\n"
	folded := "X-Folded: a\r\n" + strings.Repeat(" "+strings.Repeat("b", 70)+"\r\n", maxHeaderBytes/72+10)
	many := strings.Repeat("X-F: v\r\n", maxHeaderFields+1)
	for _, tc := range []struct {
		name string
		msg  string
		bad  bool
	}{
		{"plain", "Subject: x\r\n\r\nbody\r\n", false},
		{"multipart", multipartMessage(""), false},
		{"LF only", strings.ReplaceAll(multipartMessage("X-A: b\r\n"), "\r\n", "\n"), false},
		{"near limits", "Subject: x\r\n" + strings.Repeat("X-F: "+strings.Repeat("v", 900)+"\r\n", maxHeaderFields-2) + "\r\n" +
			strings.Repeat("body line\r\n", 300000), false},
		{"part near limits", multipartMessage(strings.Repeat("X-F: v\r\n", maxHeaderFields-2)), false},
		{"top long", long + "\r\nbody\r\n", true},
		{"top folded", folded + "\r\nbody\r\n", true},
		{"top fields", many + "\r\nbody\r\n", true},
		{"top without end", "Subject: x\r\n" + strings.Repeat("y", 3*maxHeaderBytes), true},
		{"part long", multipartMessage(long), true},
		{"part fields", multipartMessage(many), true},
		{"part folded LF", strings.ReplaceAll(multipartMessage(folded), "\r\n", "\n"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &countReader{r: strings.NewReader(tc.msg)}
			sc, err := scanMessage(src)
			if !tc.bad {
				if err != nil {
					t.Fatal(err)
				}
				actions, _, _ := plan(sc, int64(len(tc.msg)))
				if err := writeDraft(io.Discard, strings.NewReader(tc.msg), "", actions); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, errHeaderTooLarge) {
				t.Fatalf("scan: %v, want errHeaderTooLarge", err)
			}
			// Refused as soon as the limit is passed, not at the end.
			if src.n > maxHeaderBytes+1<<20 {
				t.Fatalf("read %d bytes of %d before refusing", src.n, len(tc.msg))
			}
			if err := writeDraft(io.Discard, strings.NewReader(tc.msg), "", nil); !errors.Is(err, errHeaderTooLarge) {
				t.Fatalf("writeDraft: %v, want errHeaderTooLarge", err)
			}
			if err := visitLeaves(strings.NewReader(tc.msg), map[string]action{"1.0": upload},
				func(string, io.Reader) error { return nil }); !errors.Is(err, errHeaderTooLarge) {
				t.Fatalf("visitLeaves: %v, want errHeaderTooLarge", err)
			}
			se, _ := replyFor(&errContent{err}, "a@example.com", "a@example.com")
			if se.Code != 554 || se.EnhancedCode != (gosmtp.EnhancedCode{5, 6, 0}) {
				t.Fatalf("reply %v, want 554 5.6.0", se)
			}
		})
	}
}

// FuzzMIMEPlan runs the MIME scan, the planning of a draft and its
// writing, and the second walk over what is attached separately, on
// arbitrary messages: none may panic, and what the scan accepts the
// later passes read as well.
func FuzzMIMEPlan(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n"))
	f.Add([]byte(multipartMessage("")))
	f.Add([]byte(multipartMessage("Content-Disposition: attachment; filename=a.bin\r\nContent-Transfer-Encoding: base64\r\n")))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/mixed; boundary=c\n\n--c\n\nx\n--c--\n--b--\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nX:" + strings.Repeat(" y\r\n", 100) + "\r\n\r\n--b--"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		sc, err := scanMessage(bytes.NewReader(msg))
		if err != nil {
			return
		}
		// Make every leaf but the bodies go out separately, to exercise
		// the draft's rewriting.
		actions := make(map[string]action)
		for _, l := range sc.leaves {
			if !l.body {
				actions[l.path] = attach
			}
		}
		if err := writeDraft(io.Discard, bytes.NewReader(msg), "Message-ID: <x@y>\r\n", actions); err != nil {
			t.Fatalf("scan accepted the message, writeDraft: %v", err)
		}
		if _, _, err := plan(sc, int64(len(msg))); err != nil {
			t.Fatal(err)
		}
		seen := 0
		if err := visitLeaves(bytes.NewReader(msg), actions, func(path string, body io.Reader) error {
			if _, ok := actions[path]; !ok {
				t.Fatalf("visited %s, not planned", path)
			}
			seen++
			_, err := io.Copy(io.Discard, body)
			return err
		}); err != nil {
			t.Fatalf("scan accepted the message, visitLeaves: %v", err)
		}
		if seen != len(actions) {
			t.Fatalf("visited %d leaves of %d planned", seen, len(actions))
		}
	})
}
