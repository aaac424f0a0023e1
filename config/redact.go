package config

import (
	"encoding/json"
	"fmt"
)

// appFields has App's fields without its methods, so printing or encoding it does
// not recurse into them.
type appFields App

func (a App) redacted() appFields {
	c := appFields(a)
	if c.ClientSecret != "" {
		c.ClientSecret = "[redacted]"
	}
	return c
}

// Format prints an App with its ClientSecret redacted, whatever the verb, so
// that logging an App or a Config cannot leak the secret.
func (a App) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), a.redacted())
}

// MarshalJSON encodes an App with its ClientSecret redacted, for JSON log
// handlers.
func (a App) MarshalJSON() ([]byte, error) { return json.Marshal(a.redacted()) }
