package main

import (
	"fmt"
	"strings"

	"github.com/mailbroker/broker/config"
)

// findAccount is the configured account of mailbox (or login name).
func findAccount(cfg *config.Config, name string) (*config.Account, error) {
	name = normalizeMailbox(name)
	for _, a := range cfg.Accounts {
		if a.Mailbox == name {
			return a, nil
		}
	}
	for _, a := range cfg.Accounts {
		if a.Login == name {
			return a, nil
		}
	}
	return nil, fmt.Errorf("%s is not a configured account in %s", name, cfg.Path)
}

func normalizeMailbox(s string) string { return strings.ToLower(strings.TrimSpace(s)) }
