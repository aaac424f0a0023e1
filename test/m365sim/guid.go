package m365sim

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

// NewGUID returns a random version 4 GUID in the lower-case form Entra uses
// for tenant, client and object IDs.
func NewGUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// randomString returns n random bytes in unpadded base64url.
func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
