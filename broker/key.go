package broker

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// KeyFile is the sealing key's file name, both as a systemd credential and
// in the state directory.
const KeyFile = "broker.key"

// LoadKey returns the sealing key. A systemd credential
// ($CREDENTIALS_DIRECTORY/broker.key, from LoadCredential=) wins; otherwise
// stateDir/broker.key is read, or created with a new random key.
func LoadKey(stateDir string) ([]byte, error) {
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		path := filepath.Join(dir, KeyFile)
		data, err := os.ReadFile(path)
		if err == nil {
			// systemd owns this file's permissions; no mode check.
			return parseKey(path, data)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("sealing key: %w", err)
		}
	}
	path := filepath.Join(stateDir, KeyFile)
	key, err := readKeyFile(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	key, err = createKeyFile(path)
	if errors.Is(err, fs.ErrExist) {
		// Another process created it first: use theirs.
		return readKeyFile(path)
	}
	return key, err
}

func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("sealing key %s is accessible by group or others (mode %v); run: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("sealing key %s is empty; if nothing was sealed with it yet, delete it and start again", path)
	}
	return parseKey(path, data)
}

// createKeyFile publishes a new key atomically and exclusively: the key is
// written to a temporary file, then hard-linked to path, which fails if path
// exists (like O_EXCL) and never shows a half-written key to a process
// starting at the same moment.
func createKeyFile(path string) ([]byte, error) {
	key := make([]byte, KeySize)
	rand.Read(key)
	text := append(base64.StdEncoding.AppendEncode(nil, key), '\n')

	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+KeyFile+".*") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(text)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return key, nil
}

// parseKey accepts 32 raw bytes, 64 hex characters or standard base64, each
// with an optional trailing newline. Errors name the file, never its bytes.
func parseKey(path string, data []byte) ([]byte, error) {
	for _, text := range [][]byte{data, bytes.TrimSuffix(data, []byte("\n")), bytes.TrimSuffix(data, []byte("\r\n"))} {
		switch len(text) {
		case KeySize:
			return bytes.Clone(text), nil
		case 2 * KeySize:
			if key, err := hex.DecodeString(string(text)); err == nil {
				return key, nil
			}
		case base64.StdEncoding.EncodedLen(KeySize):
			if key, err := base64.StdEncoding.DecodeString(string(text)); err == nil && len(key) == KeySize {
				return key, nil
			}
		}
	}
	return nil, fmt.Errorf("sealing key %s: want %d raw bytes, %d hex characters or %d base64 characters (%d bytes found, not a valid key)",
		path, KeySize, 2*KeySize, base64.StdEncoding.EncodedLen(KeySize), len(data))
}
