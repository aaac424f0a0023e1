package broker

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"time"
)

const (
	successTTL  = time.Hour
	successSize = 10000
)

type cacheKey [sha256.Size]byte

// successCache remembers verified app passwords so that a repeat login
// skips argon2. Entries are keyed by an HMAC under a per-process key: the
// map never holds a password, nor a hash of one that could be attacked
// offline.
type successCache struct {
	key []byte

	mu      sync.Mutex
	entries map[cacheKey]cacheEntry
	// gen changes on every revocation; a check that began under an older
	// gen must not cache its result, or a revoked password would live on.
	gen uint64
}

type cacheEntry struct {
	mailbox, id string
	expires     time.Time
}

func newSuccessCache() *successCache {
	key := make([]byte, 32)
	rand.Read(key)
	return &successCache{key: key, entries: make(map[cacheKey]cacheEntry)}
}

func (c *successCache) keyOf(mailbox, password string) cacheKey {
	mac := hmac.New(sha256.New, c.key)
	mac.Write([]byte(mailbox))
	mac.Write([]byte{0})
	mac.Write([]byte(password))
	var k cacheKey
	mac.Sum(k[:0])
	return k
}

// get returns the app password ID of a remembered success.
func (c *successCache) get(k cacheKey, now time.Time) (id string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		return "", false
	}
	if !now.Before(e.expires) {
		delete(c.entries, k)
		return "", false
	}
	return e.id, true
}

func (c *successCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put remembers a success verified under generation gen.
func (c *successCache) put(k cacheKey, gen uint64, e cacheEntry, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.entries) >= successSize {
		for k, old := range c.entries {
			if !now.Before(old.expires) {
				delete(c.entries, k)
			}
		}
	}
	if len(c.entries) >= successSize {
		for k := range c.entries { // an arbitrary victim: map order is random
			delete(c.entries, k)
			break
		}
	}
	c.entries[k] = e
}

// revoke forgets every success of one app password, or of every password of
// mailbox when id is empty.
func (c *successCache) revoke(mailbox, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for k, e := range c.entries {
		if e.mailbox == mailbox && (id == "" || e.id == id) {
			delete(c.entries, k)
		}
	}
}
