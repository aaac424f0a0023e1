package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// validator turns raw settings into a Config, collecting every problem.
type validator struct {
	path     string // as given to Parse
	file     string // path, for messages
	dir      string // against which relative file names are resolved
	lines    *keyLines
	errs     []*Error
	warnings []*Error
	// secretFileSet records apps with a client_secret_file, usable or not.
	secretFileSet map[*App]bool
	// listenKeys maps each listen address of every section to its key.
	listenKeys map[string]string
	// hasPOP3: the file has a [pop3] section, for which delegated
	// accounts' default scopes include POP.AccessAsUser.All.
	hasPOP3 bool
}

func newValidator(path string, data []byte, md *toml.MetaData) *validator {
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		dir = filepath.Dir(path)
	}
	v := &validator{path: path, file: displayName(path), dir: dir, lines: scanKeyLines(data), secretFileSet: map[*App]bool{}, listenKeys: map[string]string{}}
	v.unknownKeys(md)
	return v
}

func displayName(path string) string {
	if path == "" {
		return "<config>"
	}
	return path
}

func (v *validator) errorf(key, format string, args ...any) {
	v.errs = append(v.errs, v.newError(key, format, args...))
}

func (v *validator) warnf(key, format string, args ...any) {
	v.warnings = append(v.warnings, v.newError(key, format, args...))
}

func (v *validator) newError(key, format string, args ...any) *Error {
	return &Error{File: v.file, Line: v.lines.line(key), Key: key, Msg: fmt.Sprintf(format, args...)}
}

// err returns every problem, ordered by line so they read like the file.
func (v *validator) err() error {
	if len(v.errs) == 0 {
		return nil
	}
	sortByLine(v.errs)
	errs := make([]error, len(v.errs))
	for i, e := range v.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// sortByLine orders problems like the file; problems without a line, which
// concern the file as a whole, come first.
func sortByLine(errs []*Error) {
	slices.SortStableFunc(errs, func(a, b *Error) int { return a.Line - b.Line })
}

// unknownKeys reports keys no raw struct field took, and keys that only
// matched a field by ignoring case, which the toml package allows.
func (v *validator) unknownKeys(md *toml.MetaData) {
	seen := map[string]int{}
	reported := map[string]bool{}
	for _, k := range md.Undecoded() {
		ks := k.String()
		n := seen[ks]
		seen[ks]++
		if v.parentReported(reported, k) {
			continue
		}
		occ := v.lines.occurrence(ks, n)
		key := occ.path
		if key == "" {
			key = ks
		}
		v.errs = append(v.errs, &Error{File: v.file, Line: occ.line, Key: key, Msg: "unknown key"})
	}
	for _, k := range md.Keys() {
		ks := k.String()
		if reported[ks] || ks == strings.ToLower(ks) || v.parentReported(reported, k) {
			continue
		}
		occ := v.lines.occurrence(ks, 0)
		v.errs = append(v.errs, &Error{File: v.file, Line: occ.line, Key: ks,
			Msg: fmt.Sprintf("unknown key (keys are lower case: %s)", strings.ToLower(ks))})
	}
}

// parentReported marks k reported, and tells whether its table already was:
// under an unknown table, only the table is worth an error.
func (v *validator) parentReported(reported map[string]bool, k toml.Key) bool {
	reported[k.String()] = true
	return len(k) > 1 && reported[toml.Key(k[:len(k)-1]).String()]
}

// str checks that an optional setting is a non-empty string and returns it;
// ok is false when it is absent or wrong.
func (v *validator) str(key string, t text) (s string, ok bool) {
	switch {
	case !t.set:
		return "", false
	case t.wrongType != "":
		v.errorf(key, "must be a string, not %s", t.wrongType)
		return "", false
	case t.s == "":
		v.errorf(key, "must not be empty")
		return "", false
	}
	return t.s, true
}

// required is str for a setting that must be present.
func (v *validator) required(key string, t text) (string, bool) {
	if !t.set {
		v.errorf(key, "required")
		return "", false
	}
	return v.str(key, t)
}

// integer checks that an optional setting is an integer and returns it.
func (v *validator) integer(key string, n number) (int64, bool) {
	switch {
	case !n.set:
		return 0, false
	case n.wrongType != "":
		v.errorf(key, "must be an integer, not %s", n.wrongType)
		return 0, false
	}
	return n.n, true
}

func (v *validator) list(key string, t texts) ([]string, bool) {
	if t.wrongType != "" {
		v.errorf(key, "must be an array of strings, not %s", t.wrongType)
		return nil, false
	}
	return t.list, t.set
}

// resolve makes a file name absolute against the configuration file's directory.
func (v *validator) resolve(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(v.dir, p)
}

func (v *validator) config(raw *rawConfig) *Config {
	cfg := &Config{Path: v.path, StateDir: DefaultStateDir}
	if dir, ok := v.str("state_dir", raw.StateDir); ok {
		cfg.StateDir = v.resolve(dir)
	}
	cfg.ControlSocket = v.controlSocket(raw.ControlSocket, cfg.StateDir)
	cfg.LogLevel = v.logLevel(raw.LogLevel)
	cfg.Limits = v.limits(raw.Limits)
	cfg.Apps = v.apps(raw.Apps)
	v.hasPOP3 = raw.POP3 != nil
	cfg.Accounts = v.accounts(raw.Accounts, cfg.Apps)
	if raw.IMAP != nil {
		cfg.IMAP = v.imap(raw.IMAP, cfg.Apps)
	}
	if raw.SMTP != nil {
		cfg.SMTP = v.smtp(raw.SMTP, cfg.Apps, cfg.Accounts)
	}
	if raw.POP3 != nil {
		cfg.POP3 = v.pop3(raw.POP3, cfg.Apps)
	}
	cfg.Metrics = v.metrics(raw.Metrics)
	sortByLine(v.warnings)
	for _, w := range v.warnings {
		cfg.Warnings = append(cfg.Warnings, w.Error())
	}
	return cfg
}
