package config

import "strings"

// AccountByLogin returns the account with the local login name, compared
// without regard to case, or nil.
func (c *Config) AccountByLogin(name string) *Account {
	name = strings.ToLower(name)
	for _, a := range c.Accounts {
		if a.Login == name {
			return a
		}
	}
	return nil
}

// AppByName returns the named app, or nil.
func (c *Config) AppByName(name string) *App { return appByName(c.Apps, name) }
