package config

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// appFields has App's fields without its methods, so printing or encoding it does
// not recurse into them.
type appFields App

func (a App) redacted() appFields {
	c := appFields(a)
	if c.ClientSecret != "" {
		c.ClientSecret = "[redacted]"
	}
	if c.Key != nil {
		c.Key = redactedKey{}
	}
	return c
}

// redactedKey stands for a private key in printed Apps.
type redactedKey struct{}

func (redactedKey) Public() crypto.PublicKey { return nil }
func (redactedKey) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("redacted key")
}
func (redactedKey) String() string { return "[redacted]" }

// Format prints an App with its ClientSecret redacted, whatever the verb, so
// that logging an App or a Config cannot leak the secret.
func (a App) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), a.redacted())
}

// MarshalJSON encodes an App with its ClientSecret redacted, for JSON log
// handlers.
func (a App) MarshalJSON() ([]byte, error) { return json.Marshal(a.redacted()) }
