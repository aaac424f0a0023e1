package broker

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadKeyCreates(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	dir := filepath.Join(t.TempDir(), "state")
	key, err := LoadKey(dir)
	if err != nil {
		t.Fatalf("LoadKey: %v", err)
	}
	if len(key) != KeySize {
		t.Fatalf("got %d-byte key, want %d", len(key), KeySize)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, KeyFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Fatalf("%s: got mode %v, want %v", path, got, want)
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	if want := base64.StdEncoding.EncodeToString(key) + "\n"; string(data) != want {
		t.Fatalf("key file is not base64 + newline")
	}
	again, err := LoadKey(dir)
	if err != nil || !bytes.Equal(again, key) {
		t.Fatalf("second LoadKey gave another key (%v)", err)
	}
}

func TestLoadKeyFormats(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	key := bytes.Repeat([]byte{0xa5, '\n'}, KeySize/2) // raw keys may hold newlines
	tests := []struct {
		name, data string
		ok         bool
	}{
		{"raw", string(key), true},
		{"raw newline", string(key) + "\n", true},
		{"hex", hex.EncodeToString(key), true},
		{"hex newline", hex.EncodeToString(key) + "\n", true},
		{"hex crlf", hex.EncodeToString(key) + "\r\n", true},
		{"base64", base64.StdEncoding.EncodeToString(key), true},
		{"base64 newline", base64.StdEncoding.EncodeToString(key) + "\n", true},
		{"short", "tooshort\n", false},
		{"bad hex", strings.Repeat("zz", KeySize), false},
		{"base64 of 31", base64.StdEncoding.EncodeToString(key[:31]), false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, KeyFile)
			if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadKey(dir)
			if !tt.ok {
				if err == nil {
					t.Fatalf("LoadKey succeeded, want an error")
				}
				if !strings.Contains(err.Error(), path) {
					t.Fatalf("error %q does not name %s", err, path)
				}
				if tt.data != "" && strings.Contains(err.Error(), strings.TrimSpace(tt.data)) {
					t.Fatalf("error %q shows the key file's content", err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("LoadKey = %x, %v; want %x", got, err, key)
			}
		})
	}
}

func TestLoadKeyRefusesLoosePermissions(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	dir := t.TempDir()
	path := filepath.Join(dir, KeyFile)
	secret := hex.EncodeToString(bytes.Repeat([]byte{3}, KeySize))
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := LoadKey(dir)
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+path) || strings.Contains(err.Error(), secret) {
		t.Fatalf("got %v, want an error naming %s and the chmod fix", err, path)
	}
}

func TestLoadKeyPrefersSystemdCredential(t *testing.T) {
	creds, state := t.TempDir(), t.TempDir()
	key := bytes.Repeat([]byte{9}, KeySize)
	if err := os.WriteFile(filepath.Join(creds, KeyFile), []byte(hex.EncodeToString(key)+"\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	got, err := LoadKey(state)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("LoadKey = %x, %v; want the credential %x", got, err, key)
	}
	if _, err := os.Stat(filepath.Join(state, KeyFile)); !os.IsNotExist(err) {
		t.Fatalf("LoadKey created a key in the state directory too (%v)", err)
	}

	// A credentials directory without broker.key falls back to the state
	// directory.
	t.Setenv("CREDENTIALS_DIRECTORY", t.TempDir())
	if _, err := LoadKey(state); err != nil {
		t.Fatalf("LoadKey without credential: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, KeyFile)); err != nil {
		t.Fatalf("no key created in the state directory: %v", err)
	}
}

// Processes starting together agree on one key.
func TestLoadKeyConcurrentCreation(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	dir := filepath.Join(t.TempDir(), "state")
	const n = 8
	keys := make(chan []byte, n)
	errs := make(chan error, n)
	var start sync.WaitGroup
	start.Add(1)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			start.Wait()
			k, err := LoadKey(dir)
			keys <- k
			errs <- err
		})
	}
	start.Done()
	wg.Wait()
	close(keys)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("LoadKey: %v", err)
		}
	}
	first := <-keys
	for k := range keys {
		if !bytes.Equal(k, first) {
			t.Fatalf("concurrent LoadKey calls returned different keys")
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("got %d files in the state directory, want only %s", len(entries), KeyFile)
	}
}
