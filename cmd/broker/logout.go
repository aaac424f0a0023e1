package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/mailbroker/broker/config"
)

const logoutUsage = `usage: broker logout [-config FILE] MAILBOX

Forgets the tokens (and a sealed password) of MAILBOX's sign-in, for every
account that shares it. A delegated account then waits for broker login; an
app-only one gets a new token at its next session.

flags:
`

func logoutCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("logout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, logoutUsage)
		fs.PrintDefaults()
	}
	configPath := fs.String("config", config.DefaultPath, "configuration `file`")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("logout takes one MAILBOX")
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	acct, err := findAccount(cfg, pos[0])
	if err != nil {
		return err
	}
	admin, done, err := openAdmin(cfg)
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
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
