package broker

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/mailbroker/broker/config"
)

// credWatchInterval is how often an app's credential files are checked for
// a renewal: an administrator who writes a new secret after AADSTS7000222
// sees broker use it within seconds, without a restart.
const credWatchInterval = 2 * time.Second

// clientCredential is what an app authenticates with at the token
// endpoint: a secret, a certificate and key, or nothing (a public client).
type clientCredential struct {
	secret string
	cert   *x509.Certificate
	key    crypto.Signer
}

// appCredential holds an app's current credential, replaced when its files
// change.
type appCredential struct {
	app *config.App
	cur atomic.Pointer[clientCredential]
	// stamp identifies the files' contents as last read (the watcher's).
	stamp []byte
}

func newAppCredential(app *config.App) *appCredential {
	c := &appCredential{app: app}
	c.cur.Store(&clientCredential{secret: app.ClientSecret, cert: app.Certificate, key: app.Key})
	c.stamp = c.fileStamp()
	return c
}

func (c *appCredential) get() *clientCredential { return c.cur.Load() }

// public reports whether the app has no credential of its own.
func (c *appCredential) public() bool {
	cc := c.get()
	return cc.secret == "" && cc.key == nil
}

// files are the credential files configured for the app.
func (c *appCredential) files() []string {
	var files []string
	for _, f := range []string{c.app.ClientSecretFile, c.app.CertificateFile, c.app.KeyFile} {
		if f != "" {
			files = append(files, f)
		}
	}
	return files
}

// fileStamp digests the files' metadata: size, modification time and
// inode, which a rewrite or an atomic rename changes.
func (c *appCredential) fileStamp() []byte {
	h := sha256.New()
	for _, f := range c.files() {
		info, err := os.Stat(f)
		if err != nil {
			fmt.Fprintf(h, "%s missing\n", f)
			continue
		}
		ino, _ := inode(info)
		fmt.Fprintf(h, "%s %d %d %d\n", f, info.Size(), info.ModTime().UnixNano(), ino)
	}
	return h.Sum(nil)
}

// reload re-reads the files when they changed since the last look, and
// reports whether a new, valid credential is now in use.
func (c *appCredential) reload(log *slog.Logger) bool {
	if len(c.files()) == 0 {
		return false
	}
	stamp := c.fileStamp()
	if bytes.Equal(stamp, c.stamp) {
		return false
	}
	c.stamp = stamp
	next := &clientCredential{}
	var err error
	switch {
	case c.app.ClientSecretFile != "":
		next.secret, err = config.ReadClientSecret(c.app.ClientSecretFile)
	case c.app.CertificateFile != "":
		next.cert, next.key, err = config.ReadCertificate(c.app.CertificateFile, c.app.KeyFile)
	}
	if err != nil {
		// Half-written, or a mistake: keep the credential in use.
		log.Warn("credential file changed but cannot be used; keeping the current credential", "app", c.app.Name, "err", err)
		return false
	}
	cur := c.get()
	if next.secret == cur.secret && (next.cert == nil || cur.cert != nil && next.cert.Equal(cur.cert)) {
		return false
	}
	c.cur.Store(next)
	log.Info("credential file changed; using the new credential", "app", c.app.Name)
	return true
}

// watchCredentials re-reads changed credential files until the broker
// closes, and retries at once the sign-ins a new credential may fix.
func (m *tokens) watchCredentials() {
	t := time.NewTicker(credWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-m.life.ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range m.credentials() {
			if c.reload(m.log) {
				m.retryNow(func(a *signIn) bool { return a.sp().cred == c })
			}
		}
	}
}

func (m *tokens) credentials() []*appCredential {
	m.mu.Lock()
	defer m.mu.Unlock()
	list := make([]*appCredential, 0, len(m.creds))
	for _, c := range m.creds {
		list = append(list, c)
	}
	return list
}

// retryNow makes the failing sign-ins that match due at once: something an
// administrator did (a new credential, a reload) may have fixed them. Those
// waiting for broker login keep waiting.
func (m *tokens) retryNow(match func(*signIn) bool) {
	for _, a := range m.snapshot() {
		if !match(a) {
			continue
		}
		a.mu.Lock()
		if a.err != nil && !a.err.NeedsLogin {
			a.retryAt = time.Time{}
		}
		a.mu.Unlock()
	}
	m.kick()
}
