package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/store"
)

// backupCmd writes a consistent copy of the database to FILE (mode 0600),
// or to standard output for "-". A running daemon makes the copy and sends
// it over the control socket, since it may write nowhere but its own
// directories; without one, the CLI opens the database itself.
func backupCmd(args []string, stdout, stderr io.Writer) error {
	fs, configPath := newCommand("backup", "usage: broker backup [-config FILE] FILE|-\n", stderr)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		fs.Usage()
		return &exitError{code: exitUsage}
	}
	dest := pos[0]
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	report := stdout
	if dest == "-" {
		report = stderr
	}
	var n int64
	var how string
	write := func(w io.Writer) (err error) {
		n, how, err = backup(cfg, w)
		return err
	}
	if dest == "-" {
		err = write(stdout)
	} else {
		err = writeFileAtomic(dest, write)
	}
	if err != nil {
		return err
	}
	name := dest
	if dest == "-" {
		name = "standard output"
	}
	fmt.Fprintf(report, "Backed up the database (%d bytes, %s) to %s.\n", n, how, name)
	fmt.Fprintf(report, "The sealing key is not in the backup: keep a copy of %s too (or of the file the unit's LoadCredential=%s names).\n",
		filepath.Join(cfg.StateDir, broker.KeyFile), broker.KeyFile)
	return nil
}

// backup copies the database to w, through the daemon when one runs.
func backup(cfg *config.Config, w io.Writer) (n int64, how string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	client, err := dialControl(controlSocketPath(cfg))
	if err == nil {
		n, err = client.Backup(ctx, w)
		return n, "made by the running daemon", err
	}
	if !errors.Is(err, errNoDaemon) {
		return 0, "", err
	}
	path := filepath.Join(cfg.StateDir, dbFile)
	// store.Open would make an empty database where there is none.
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return 0, "", fmt.Errorf("no database at %s: nothing to back up (is state_dir right?)", path)
	}
	st, err := store.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer st.Close()
	n, err = st.Backup(w)
	return n, "no daemon running", err
}

// writeFileAtomic has write fill a new file (mode 0600) next to path, then
// renames it to path, so that path is either the old file or a complete
// new one.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if err = write(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
