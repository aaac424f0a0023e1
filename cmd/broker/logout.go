package main

import (
	"fmt"
	"io"
	"strings"
)

const logoutUsage = `usage: broker logout [-config FILE] MAILBOX

Forgets the tokens (and a sealed password) of MAILBOX's sign-in, for every
account that shares it. A delegated account then waits for broker login; an
app-only one gets a new token at its next session.

flags:
`

func logoutCmd(args []string, stdout, stderr io.Writer) error {
	fs, configPath := newCommand("logout", logoutUsage, stderr)
	acct, admin, ctx, done, err := accountCommand(fs, configPath, args)
	if err != nil {
		return err
	}
	defer done()
	accounts, err := admin.Logout(ctx, acct.Mailbox)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Logged out; tokens forgotten for: %s\n", strings.Join(accounts, ", "))
	if acct.Delegated() {
		fmt.Fprintf(stdout, "Run 'broker login %s' to sign in again.\n", acct.Mailbox)
	}
	return nil
}
