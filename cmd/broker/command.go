package main

// The prologue the subcommands share: their flag set, the MAILBOX they
// name, its account, and the admin that serves them.

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/mailbroker/broker/config"
)

// newCommand makes subcommand name's flag set, which reports on stderr,
// and its -config flag. Its usage prints usage, then the flags; with no
// usage, it is the flag package's default.
func newCommand(name, usage string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if usage != "" {
		fs.Usage = func() {
			fmt.Fprint(stderr, usage)
			fs.PrintDefaults()
		}
	}
	return fs, fs.String("config", config.DefaultPath, "configuration `file`")
}

// mailboxArg parses args, which name one MAILBOX.
func mailboxArg(fs *flag.FlagSet, args []string) (string, error) {
	mailbox, _, err := parseMailbox(fs, args, false)
	return mailbox, err
}

// optionalMailbox parses args, which name at most one MAILBOX; named
// says whether they do.
func optionalMailbox(fs *flag.FlagSet, args []string) (mailbox string, named bool, err error) {
	return parseMailbox(fs, args, true)
}

func parseMailbox(fs *flag.FlagSet, args []string, optional bool) (string, bool, error) {
	pos, err := parseFlags(fs, args)
	if err != nil {
		return "", false, err
	}
	switch {
	case optional && len(pos) > 1:
		fs.Usage()
		return "", false, fmt.Errorf("%s takes at most one MAILBOX", fs.Name())
	case !optional && len(pos) != 1:
		fs.Usage()
		return "", false, fmt.Errorf("%s takes one MAILBOX", fs.Name())
	case len(pos) == 0:
		return "", false, nil
	}
	return pos[0], true, nil
}

// loadAccount loads the configuration at path and finds mailbox's
// account in it.
func loadAccount(path, mailbox string) (*config.Config, *config.Account, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	acct, err := findAccount(cfg, mailbox)
	if err != nil {
		return nil, nil, err
	}
	return cfg, acct, nil
}

// accountCommand parses the args of a command about one MAILBOX, finds
// its account in the configuration at configPath, and opens an admin
// session for it (see adminSession).
func accountCommand(fs *flag.FlagSet, configPath *string, args []string) (acct *config.Account, admin controlAdmin, ctx context.Context, done func(), err error) {
	mailbox, err := mailboxArg(fs, args)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	cfg, acct, err := loadAccount(*configPath, mailbox)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	admin, ctx, done, err = adminSession(context.Background(), cfg)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return acct, admin, ctx, done, nil
}

// adminSession opens cfg's admin (see openAdmin) and bounds ctx by
// controlTimeout for its calls; done cancels the one and releases the
// other.
func adminSession(ctx context.Context, cfg *config.Config) (admin controlAdmin, _ context.Context, done func(), err error) {
	admin, release, err := openAdmin(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	return admin, ctx, func() {
		cancel()
		release()
	}, nil
}
