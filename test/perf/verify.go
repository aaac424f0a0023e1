package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

const (
	// deliveryTimeout bounds the wait for Postfix to deliver what it
	// accepted; a 100 MiB message takes seconds.
	deliveryTimeout = 3 * time.Minute
	// deliveryPoll is how often the sink mailbox is asked for news; there
	// is no notification short of IDLE, which Dovecot itself polls.
	deliveryPoll = 20 * time.Millisecond
	// maxListed bounds the mismatches named in the report.
	maxListed = 10
)

// verifier checks every relayed message as delivered against what was
// sent, and every fetched body against what was stored.
type verifier struct {
	sink    *imapConn // the sink mailbox's INBOX, selected, straight at Dovecot
	lastUID uint32
	exists  int                 // messages in the sink, as last told
	checked int                 // of them, those fetched and checked
	pending map[string]expected // sent, not yet seen delivered, by Message-ID

	Messages   int64    `json:"messages"` // checked, relayed and fetched
	Bytes      int64    `json:"bytes"`
	Mismatches []string `json:"mismatches"`
	Unexpected int      `json:"unexpected"` // delivered without a 250 to the client
}

type expected struct {
	label string
	size  int64
	sum   [sha256.Size]byte
}

// newVerifier takes a session with the sink's INBOX selected, which held
// exists messages then; they are not checked.
func newVerifier(sink *imapConn, exists int, lastUID uint32) *verifier {
	return &verifier{sink: sink, exists: exists, checked: exists, lastUID: lastUID, pending: make(map[string]expected)}
}

// update notes the message count the server told.
func (v *verifier) update(untagged []string) {
	if n := exists(untagged); n >= 0 {
		v.exists = n
	}
}

func (v *verifier) mismatch(format string, args ...any) {
	v.Mismatches = append(v.Mismatches, fmt.Sprintf(format, args...))
}

// sent records a message the server took (250).
func (v *verifier) sent(label string, m *message) {
	v.pending[m.id] = expected{label: label, size: int64(len(m.raw)), sum: m.sum}
}

// fetched checks a fetched body against the stored one.
func (v *verifier) fetched(label string, size int64, sum [sha256.Size]byte, want *message) {
	v.Messages++
	v.Bytes += size
	if size != int64(len(want.raw)) || sum != want.sum {
		v.mismatch("%s: fetched %d bytes differing from the %d stored", label, size, len(want.raw))
	}
}

// settle waits until every sent message is delivered to the sink and
// checks each; it fails when one is missing or differs.
func (v *verifier) settle() error {
	deadline := time.Now().Add(deliveryTimeout)
	before := len(v.Mismatches)
	for len(v.pending) > 0 {
		untagged, err := v.sink.command("NOOP", nil)
		if err != nil {
			return fmt.Errorf("sink NOOP: %v", err)
		}
		v.update(untagged)
		if v.exists > v.checked {
			if err := v.fetchNew(); err != nil {
				return err
			}
		}
		if len(v.pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for id, e := range v.pending {
				v.mismatch("%s: message %s accepted but not delivered within %v", e.label, id, deliveryTimeout)
				delete(v.pending, id)
			}
			break
		}
		time.Sleep(deliveryPoll) // polling the sink, which has no notification
	}
	if n := len(v.Mismatches) - before; n > 0 {
		return fmt.Errorf("%d messages not delivered byte for byte: %s", n, strings.Join(v.Mismatches[before:min(len(v.Mismatches), before+maxListed)], "; "))
	}
	return nil
}

// fetchNew checks the messages after lastUID.
func (v *verifier) fetchNew() error {
	untagged, err := v.sink.command(fmt.Sprintf("UID FETCH %d:* (UID BODY.PEEK[])", v.lastUID+1), func(prefix string, n int64, r io.Reader) error {
		m := uidRE.FindStringSubmatch(prefix)
		if m == nil {
			return fmt.Errorf("FETCH response without UID before BODY[]: %q", prefix)
		}
		uid, _ := strconv.ParseUint(m[1], 10, 32)
		if uint32(uid) <= v.lastUID {
			return nil // n:* names the last message even when it is older
		}
		v.checked++
		d, err := parseDelivered(r)
		if err != nil {
			return err
		}
		e, ok := v.pending[d.id]
		if !ok {
			v.Unexpected++
			return nil
		}
		delete(v.pending, d.id)
		v.Messages++
		v.Bytes += d.size
		if d.size != e.size || d.sum != e.sum {
			v.mismatch("%s: message %s delivered with %d bytes differing from the %d sent", e.label, d.id, d.size, e.size)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("fetching from the sink: %v", err)
	}
	v.update(untagged)
	for _, l := range untagged {
		if m := uidRE.FindStringSubmatch(l); m != nil {
			if uid, err := strconv.ParseUint(m[1], 10, 32); err == nil && uint32(uid) > v.lastUID {
				v.lastUID = uint32(uid)
			}
		}
	}
	return nil
}
