package broker

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// argonParams are argon2id costs. App passwords are random, so the cost
// need not slow down guessing; it only has to keep a stolen database from
// revealing them cheaply. Light parameters keep logins fast.
type argonParams struct {
	memory  uint32 // KiB
	time    uint32
	threads uint8
}

var defaultArgon = argonParams{memory: 19 * 1024, time: 2, threads: 1}

const (
	saltLen = 16
	keyLen  = 32
)

var b64 = base64.RawStdEncoding

// phcHash is a parsed "$argon2id$v=19$m=..,t=..,p=..$salt$hash".
type phcHash struct {
	params     argonParams
	salt, hash []byte
}

func newPHC(password string, p argonParams) phcHash {
	salt := make([]byte, saltLen)
	rand.Read(salt)
	return phcHash{params: p, salt: salt, hash: argon2.IDKey([]byte(password), salt, p.time, p.memory, p.threads, keyLen)}
}

func (h phcHash) String() string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version,
		h.params.memory, h.params.time, h.params.threads, b64.EncodeToString(h.salt), b64.EncodeToString(h.hash))
}

// matches hashes password with h's salt and parameters. It is the
// expensive step.
func (h phcHash) matches(password string) bool {
	got := argon2.IDKey([]byte(password), h.salt, h.params.time, h.params.memory, h.params.threads, uint32(len(h.hash)))
	return subtle.ConstantTimeCompare(got, h.hash) == 1
}

var errPHC = errors.New("not an argon2id PHC string")

// parsePHC reads a stored hash. Parameters are bounded so that a damaged
// record cannot make a login allocate gigabytes.
func parsePHC(s string) (phcHash, error) {
	f := strings.Split(s, "$")
	if len(f) != 6 || f[0] != "" || f[1] != "argon2id" || f[2] != "v="+strconv.Itoa(argon2.Version) {
		return phcHash{}, errPHC
	}
	ps := strings.Split(f[3], ",")
	if len(ps) != 3 {
		return phcHash{}, errPHC
	}
	var v [3]uint64
	for i, name := range []string{"m", "t", "p"} {
		val, ok := strings.CutPrefix(ps[i], name+"=")
		n, err := strconv.ParseUint(val, 10, 32)
		if !ok || err != nil {
			return phcHash{}, errPHC
		}
		v[i] = n
	}
	h := phcHash{params: argonParams{memory: uint32(v[0]), time: uint32(v[1]), threads: uint8(v[2])}}
	if v[2] < 1 || v[2] > 16 || v[1] < 1 || v[1] > 16 || v[0] < 8*v[2] || v[0] > 1<<20 {
		return phcHash{}, fmt.Errorf("argon2id parameters out of range: %s", f[3])
	}
	var err error
	if h.salt, err = b64.DecodeString(f[4]); err != nil || len(h.salt) < 8 || len(h.salt) > 64 {
		return phcHash{}, errPHC
	}
	if h.hash, err = b64.DecodeString(f[5]); err != nil || len(h.hash) < 16 || len(h.hash) > 64 {
		return phcHash{}, errPHC
	}
	return h, nil
}
