package harness

import (
	"github.com/mailbroker/broker/test/m365sim"

	"errors"
	"fmt"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

type file struct {
	name string
	data []byte
	mode os.FileMode
}

// writeFiles writes everything but dovecot.conf, which depends on the ports.
func (d *Dovecot) writeFiles(opts DovecotOptions) (dovecotConfData, error) {
	var conf dovecotConfData
	uid, gid, err := mailOwner()
	if err != nil {
		return conf, err
	}
	conf = dovecotConfData{Dir: d.Dir, Name: filepath.Base(d.Dir), UID: uid, GID: gid, ReuseLogin: opts.ReuseLoginProcesses}
	if _, err := user.Lookup("postfix"); err == nil {
		conf.SocketUser = "postfix"
	}

	cert, err := m365sim.NewCert("127.0.0.1", "localhost")
	if err != nil {
		return conf, err
	}
	certPEM, keyPEM := cert.CertPEM, cert.KeyPEM
	d.CACertPEM = certPEM
	d.CAFile = filepath.Join(d.Dir, "cert.pem")

	oauth2, err := render(oauth2Conf, oauth2ConfData{
		Dir: d.Dir, Issuers: strings.Join(opts.Issuers, " "), Audience: opts.Audience,
	})
	if err != nil {
		return conf, err
	}
	access, users, err := mailboxFiles(d.Dir, uid, gid, opts.Mailboxes, opts.Delegates)
	if err != nil {
		return conf, err
	}

	files := []file{
		{"cert.pem", certPEM, 0o644},
		{"key.pem", keyPEM, 0o600},
		{"oauth2.conf.ext", oauth2, 0o644},
		{"access", access, 0o644},
		{"users", users, 0o644},
	}
	for _, azp := range append([]string{"default"}, opts.AuthorizedParties...) {
		name := filepath.Join("keys", escapeKeyName(azp), "RS256", escapeKeyName(opts.KeyID))
		files = append(files, file{name, opts.PublicKeyPEM, 0o644})
	}
	// Dovecot's processes run as dovecot, dovenull and the mail user: every
	// directory on the way must be traversable.
	if err := os.Chmod(d.Dir, 0o755); err != nil {
		return conf, err
	}
	for _, f := range files {
		p := filepath.Join(d.Dir, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return conf, err
		}
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			return conf, err
		}
	}
	mail := filepath.Join(d.Dir, "mail")
	if err := os.Mkdir(mail, 0o700); err != nil {
		return conf, err
	}
	return conf, os.Chown(mail, uid, gid)
}

// mailOwner picks the system user that owns the mailboxes; Dovecot refuses
// to run mail processes as root.
func mailOwner() (uid, gid int, err error) {
	for _, name := range []string{"mail", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 == nil && err2 == nil {
			return uid, gid, nil
		}
	}
	return 0, 0, errors.New("no user \"mail\" or \"nobody\" to own the mailboxes")
}

// mailboxFiles returns the passwd-files of the access passdb and of the
// userdb. A user token opens the mailbox of its upn, whether or not it
// carries idtyp, and the mailboxes it is a delegate of; an app-only token
// (idtyp app, no upn) opens any mailbox.
func mailboxFiles(dir string, uid, gid int, mailboxes []string, delegates map[string][]string) (access, users []byte, err error) {
	var a, u strings.Builder
	for _, m := range mailboxes {
		m = strings.ToLower(m)
		local, domain, err := splitAddress(m)
		if err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(&a, "/%s/%s:\nuser/%s/%s:\napp//%s:\n", m, m, m, m, m)
		home := filepath.Join(dir, "mail", domain, local)
		fmt.Fprintf(&u, "%s::%d:%d::%s::\n", m, uid, gid, home)
	}
	for _, m := range slices.Sorted(maps.Keys(delegates)) {
		mailbox := strings.ToLower(m)
		if !slices.ContainsFunc(mailboxes, func(b string) bool { return strings.EqualFold(b, mailbox) }) {
			return nil, nil, fmt.Errorf("delegate mailbox %q is not one of DovecotOptions.Mailboxes", m)
		}
		for _, upn := range delegates[m] {
			upn = strings.ToLower(upn)
			if _, _, err := splitAddress(upn); err != nil {
				return nil, nil, fmt.Errorf("delegate of %q: %w", m, err)
			}
			fmt.Fprintf(&a, "/%s/%s:\nuser/%s/%s:\n", upn, mailbox, upn, mailbox)
		}
	}
	return []byte(a.String()), []byte(u.String()), nil
}

// splitAddress checks a lower-case address for the passwd-files.
func splitAddress(m string) (local, domain string, err error) {
	local, domain, ok := strings.Cut(m, "@")
	if !ok || local == "" || domain == "" || strings.ContainsAny(m, ":/\n\t ") {
		return "", "", fmt.Errorf("invalid mailbox %q: want local@domain", m)
	}
	return local, domain, nil
}

// escapeKeyName escapes a kid or azp the way Dovecot does before it looks
// the key up in the dict.
func escapeKeyName(s string) string {
	return strings.NewReplacer("%", "%25", "/", "%2f").Replace(s)
}
