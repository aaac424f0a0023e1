package test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoSecretAtRest logs in, then stops the daemon and looks for every
// secret in the database, the state directory and the log.
func TestNoSecretAtRest(t *testing.T) {
	env := newSimEnv(t)
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	c.Logout().Wait()
	env.Daemon.stop()

	stateDir := filepath.Join(filepath.Dir(env.Daemon.config), "state")
	db, err := os.ReadFile(filepath.Join(stateDir, "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(db, []byte(strings.ToLower(mailbox))) {
		t.Fatalf("broker.db does not mention %s: the scan below would prove nothing", mailbox)
	}
	secrets := map[string]string{
		"app password":  env.Password,
		"client secret": env.Secret,
		// Every JWT starts with the base64 of `{"`; none may be stored or logged.
		"access token": "eyJ",
	}
	places := map[string][]byte{"broker.db": db, "log": []byte(env.Daemon.Log())}
	entries, _ := os.ReadDir(stateDir)
	for _, e := range entries {
		if e.Type().IsRegular() && e.Name() != "broker.db" {
			data, _ := os.ReadFile(filepath.Join(stateDir, e.Name()))
			places[e.Name()] = data
		}
	}
	for place, data := range places {
		for what, secret := range secrets {
			if bytes.Contains(data, []byte(secret)) {
				t.Errorf("%s contains the %s in clear", place, what)
			}
		}
	}
	info, err := os.Stat(filepath.Join(stateDir, "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("broker.db mode: got %v, want 0600", mode)
	}
}
