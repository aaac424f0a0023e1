package store

import "errors"

var (
	// ErrExists is returned when adding a record whose key is taken.
	ErrExists = errors.New("store: already exists")
	// ErrLocked is returned by Open when another process holds the
	// database.
	ErrLocked = errors.New("store: database is in use by another process")
	// ErrNewerSchema is returned by Open for a database written by a newer
	// broker, whose format this one does not know.
	ErrNewerSchema = errors.New("store: database written by a newer broker")
)

type lockedError struct{ path string }

func (e *lockedError) Error() string {
	return "store: database " + e.path + " is in use by another broker process"
}

func (e *lockedError) Is(target error) bool { return target == ErrLocked }
