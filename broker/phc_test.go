package broker

import (
	"strings"
	"testing"
)

func TestPHCRoundTrip(t *testing.T) {
	h := newPHC("pw", defaultArgon)
	s := h.String()
	if !strings.HasPrefix(s, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("got %q, want the PHC prefix $argon2id$v=19$m=19456,t=2,p=1$", s)
	}
	back, err := parsePHC(s)
	if err != nil {
		t.Fatalf("parsePHC(%q): %v", s, err)
	}
	if !back.matches("pw") || back.matches("pW") {
		t.Fatalf("parsed hash does not verify like the original")
	}
}

// Stored hashes carry their parameters, so defaults can change later.
func TestPHCOtherParameters(t *testing.T) {
	h := newPHC("pw", argonParams{memory: 64, time: 1, threads: 2})
	back, err := parsePHC(h.String())
	if err != nil || !back.matches("pw") {
		t.Fatalf("hash with other parameters does not verify (%v)", err)
	}
}

func TestPHCRejects(t *testing.T) {
	salt, hash := "c2FsdHNhbHRzYWx0c2FsdA", "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
	tests := []string{
		"",
		"$argon2i$v=19$m=19456,t=2,p=1$" + salt + "$" + hash,
		"$argon2id$v=16$m=19456,t=2,p=1$" + salt + "$" + hash,
		"$argon2id$v=19$t=2,m=19456,p=1$" + salt + "$" + hash,
		"$argon2id$v=19$m=19456,t=2$" + salt + "$" + hash,
		"$argon2id$v=19$m=4194304,t=2,p=1$" + salt + "$" + hash, // 4 GiB
		"$argon2id$v=19$m=19456,t=0,p=1$" + salt + "$" + hash,
		"$argon2id$v=19$m=19456,t=2,p=0$" + salt + "$" + hash,
		"$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$",
		"$argon2id$v=19$m=19456,t=2,p=1$!!$" + hash,
		"$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$" + hash + "$x",
		"$argon2id$v=19$m=-1,t=2,p=1$" + salt + "$" + hash,
	}
	for _, s := range tests {
		if _, err := parsePHC(s); err == nil {
			t.Errorf("parsePHC(%q) succeeded, want an error", s)
		}
	}
}
