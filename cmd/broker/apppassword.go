package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

const appPasswordUsage = `usage:
  broker app-password add [-config FILE] [-label NAME] MAILBOX
  broker app-password list [-config FILE] [MAILBOX]
  broker app-password revoke [-config FILE] MAILBOX ID
`

func appPasswordCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, appPasswordUsage)
		return errors.New("app-password needs a subcommand")
	}
	fs := flag.NewFlagSet("app-password "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, appPasswordUsage) }
	configPath := fs.String("config", config.DefaultPath, "configuration `file`")
	label := fs.String("label", "", "what the password is for, e.g. the legacy system's name")
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	admin, ctx, done, err := adminSession(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer done()

	switch args[0] {
	case "add":
		if len(pos) != 1 {
			fs.Usage()
			return errors.New("add takes one MAILBOX")
		}
		info, password, err := admin.AddAppPassword(ctx, pos[0], *label)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "App password %s for %s (shown once; broker keeps only a hash):\n", info.ID, info.Mailbox)
		fmt.Fprintln(stdout, password)
	case "list":
		if len(pos) > 1 {
			fs.Usage()
			return errors.New("list takes at most one MAILBOX")
		}
		mailbox := ""
		if len(pos) == 1 {
			mailbox = pos[0]
		}
		list, err := admin.AppPasswords(ctx, mailbox)
		if err != nil {
			return err
		}
		printAppPasswords(stdout, list)
	case "revoke":
		if len(pos) != 2 {
			fs.Usage()
			return errors.New("revoke takes MAILBOX and ID")
		}
		if err := admin.RevokeAppPassword(ctx, pos[0], pos[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Revoked app password %s for %s.\n", pos[1], pos[0])
	default:
		fs.Usage()
		return fmt.Errorf("unknown app-password subcommand %q", args[0])
	}
	return nil
}

// matchStateDirOwner gives files that root just created in the state
// directory to the directory's owner, the daemon's user: otherwise a CLI
// run as root before the daemon's first start leaves it a database it
// cannot open.
func matchStateDirOwner(dir string, names ...string) {
	if os.Geteuid() != 0 {
		return
	}
	info, err := os.Stat(dir)
	if err != nil {
		return
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return
	}
	for _, name := range names {
		os.Lchown(filepath.Join(dir, name), int(st.Uid), int(st.Gid))
	}
}

func printAppPasswords(w io.Writer, list []*broker.AppPasswordInfo) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MAILBOX\tID\tLABEL\tCREATED\tLAST USED")
	for _, p := range list {
		lastUsed := "never"
		if !p.LastUsed.IsZero() {
			lastUsed = p.LastUsed.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Mailbox, p.ID, p.Label, p.CreatedAt.Local().Format(time.DateTime), lastUsed)
	}
	tw.Flush()
}
