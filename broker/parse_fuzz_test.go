package broker

import (
	"bytes"
	"testing"
)

// FuzzParsePHC: any stored string either fails to parse or parses into
// bounded parameters and prints back as itself.
func FuzzParsePHC(f *testing.F) {
	f.Add(newPHC("abcdefghijklmnopqrstuvwxyz234567", argonParams{memory: 64, time: 1, threads: 1}).String())
	f.Add("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
	f.Add("$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parsePHC(s)
		if err != nil {
			return
		}
		if h.params.memory > 1<<20 || h.params.time > 16 || h.params.threads > 16 {
			t.Fatalf("parsePHC(%q) accepted unbounded parameters %+v", s, h.params)
		}
		again, err := parsePHC(h.String())
		if err != nil || again.params != h.params || !bytes.Equal(again.salt, h.salt) || !bytes.Equal(again.hash, h.hash) {
			t.Fatalf("parsePHC(%q).String() = %q does not parse back to the same hash (%v)", s, h.String(), err)
		}
	})
}

// FuzzParseKey: a key file is either refused or yields exactly KeySize
// bytes, and an error never repeats the file's contents.
func FuzzParseKey(f *testing.F) {
	f.Add(bytes.Repeat([]byte{1}, KeySize))
	f.Add([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"))
	f.Add([]byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := parseKey("/k", data)
		if err != nil {
			if len(data) >= 8 && bytes.Contains([]byte(err.Error()), data) {
				t.Fatalf("error %q repeats the key file", err)
			}
			return
		}
		if len(key) != KeySize {
			t.Fatalf("parseKey returned %d bytes, want %d", len(key), KeySize)
		}
	})
}
