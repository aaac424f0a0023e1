package proxy

import "strings"

// maxReplyText bounds the text of a reply built from a LoginError's Reason
// or from one line of upstream's reply.
const maxReplyText = 200

// ReplyText makes s fit in the text of a reply to the client: printable
// ASCII, at most 200 octets, def if nothing is left.
func ReplyText(s, def string) string {
	b := []byte(strings.TrimSpace(s))
	for i, c := range b {
		if c < ' ' || c > '~' {
			b[i] = '?'
		}
	}
	if len(b) > maxReplyText {
		b = b[:maxReplyText]
	}
	if len(b) == 0 {
		return def
	}
	return string(b)
}
