package broker

import (
	"bytes"
	"testing"
)

func testSealer(t *testing.T, fill byte) *Sealer {
	t.Helper()
	s, err := NewSealer(bytes.Repeat([]byte{fill}, KeySize))
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	return s
}

func TestSealRoundTrip(t *testing.T) {
	s := testSealer(t, 1)
	plain := []byte(`{"access_token":"secret"}`)
	a, b := s.Seal(plain, []byte("A")), s.Seal(plain, []byte("A"))
	if bytes.Equal(a, b) {
		t.Fatalf("two seals are equal: nonce not random")
	}
	if a[0] != sealVersion {
		t.Fatalf("got version byte %d, want %d", a[0], sealVersion)
	}
	if bytes.Contains(a, []byte("secret")) {
		t.Fatalf("sealed blob holds the plaintext")
	}
	got, err := s.Open(a, []byte("A"))
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %q, %v; want %q", got, err, plain)
	}
}

func TestSealRefuses(t *testing.T) {
	s := testSealer(t, 1)
	sealed := s.Seal([]byte("token"), []byte("alice@contoso.example"))
	flipped := func(i int) []byte {
		c := bytes.Clone(sealed)
		c[i] ^= 1
		return c
	}
	tests := []struct {
		name   string
		sealer *Sealer
		blob   []byte
		aad    string
	}{
		{"other account", s, sealed, "bob@contoso.example"},
		{"other key", testSealer(t, 2), sealed, "alice@contoso.example"},
		{"version", s, flipped(0), "alice@contoso.example"},
		{"nonce", s, flipped(1), "alice@contoso.example"},
		{"ciphertext", s, flipped(1 + nonceSize), "alice@contoso.example"},
		{"tag", s, flipped(len(sealed) - 1), "alice@contoso.example"},
		{"truncated", s, sealed[:1+nonceSize+15], "alice@contoso.example"},
		{"empty", s, nil, "alice@contoso.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := tt.sealer.Open(tt.blob, []byte(tt.aad)); err == nil {
				t.Fatalf("Open = %q, want an error", got)
			}
		})
	}
}

func TestNewSealerKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := NewSealer(make([]byte, n)); err == nil {
			t.Fatalf("NewSealer(%d bytes) succeeded, want an error", n)
		}
	}
}
