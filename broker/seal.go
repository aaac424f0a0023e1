package broker

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// KeySize is the length of the sealing key: AES-256.
const KeySize = 32

// sealVersion leads every sealed blob so that the format (or the key) can
// change later without guessing.
const sealVersion byte = 1

const nonceSize = 12

// ErrUnseal is returned when a blob does not open: wrong key, wrong
// associated data (a blob moved to another account) or tampering.
var ErrUnseal = errors.New("sealed data does not open (wrong key, wrong account, or corrupted)")

// Sealer encrypts small blobs with AES-256-GCM. It is safe for concurrent
// use.
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer returns a Sealer for a 32-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("sealing key must be %d bytes, got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext bound to aad: version byte, random nonce,
// ciphertext and tag. The same aad must be given to Open.
func (s *Sealer) Seal(plaintext, aad []byte) []byte {
	out := make([]byte, 1+nonceSize, 1+nonceSize+len(plaintext)+s.aead.Overhead())
	out[0] = sealVersion
	rand.Read(out[1 : 1+nonceSize]) // never fails since Go 1.24
	return s.aead.Seal(out, out[1:1+nonceSize], plaintext, sealAAD(out[0], aad))
}

// Open decrypts a blob made by Seal with the same aad.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < 1+nonceSize+s.aead.Overhead() {
		return nil, ErrUnseal
	}
	if sealed[0] != sealVersion {
		return nil, fmt.Errorf("sealed data has unknown version %d", sealed[0])
	}
	pt, err := s.aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], sealAAD(sealed[0], aad))
	if err != nil {
		return nil, ErrUnseal
	}
	return pt, nil
}

// sealAAD authenticates the version byte too, so it cannot be altered.
func sealAAD(version byte, aad []byte) []byte {
	return append([]byte{version}, aad...)
}
