package config

import "strconv"

// Error is one problem in a configuration file.
//
// Key names the offending setting with 1-based indices for repeated tables,
// so "account[2].app" is the app key of the second [[account]].
type Error struct {
	File string
	Line int    // 0 when the problem has no line of its own
	Key  string // "" for problems with the file as a whole
	Msg  string
	// err is the underlying error, when there is one (reading the file).
	err error
}

// Unwrap returns the error behind a file that could not be read, so that
// errors.Is(err, fs.ErrNotExist) holds for a missing file.
func (e *Error) Unwrap() error { return e.err }

func (e *Error) Error() string {
	s := e.File
	if e.Line > 0 {
		s += ":" + strconv.Itoa(e.Line)
	}
	s += ": "
	if e.Key != "" {
		s += e.Key + ": "
	}
	return s + e.Msg
}
