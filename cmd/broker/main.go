// Command broker lets legacy IMAP clients log in to Microsoft 365 with app
// passwords while broker itself speaks OAuth 2.0 (XOAUTH2) upstream.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `usage: broker <command> [flags] [args]

commands:
  serve         run the daemon (-config FILE, or -dev for a simulated Microsoft 365)
  app-password  add | list | revoke app passwords for legacy clients
  login         sign a delegated account in (device code, authorization code, password)
  logout        forget an account's tokens (and a sealed password)
  status        show each account's tokens and credentials; exit 3 on a credential
                expiring within 30 days, 4 when an account cannot serve logins
  token         print a current access token for local tools (root or broker's user)
  version       print the version

login, logout, status, token and app-password go through the running daemon's
control socket (state_dir/control.sock) when it runs, and open the database
otherwise.

exit codes: 0 success, 1 error, 2 usage, 3 and 4 (status only) as above,
130 sign-in cancelled (Ctrl-C).

Run 'broker <command> -h' for a command's flags.
`

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// errUsage makes main print the usage and exit 2.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	var exit *exitError
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = serveCmd(rest, stdout, stderr)
	case "app-password":
		err = appPasswordCmd(rest, stdout, stderr)
	case "login":
		err = loginCmd(rest, os.Stdin, stdout, stderr)
	case "logout":
		err = logoutCmd(rest, stdout, stderr)
	case "status":
		err = statusCmd(rest, stdout, stderr)
	case "token":
		err = tokenCmd(rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "broker", version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "broker: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprint(stderr, usage)
		return 2
	case errors.As(err, &exit):
		if exit.msg != "" {
			fmt.Fprintln(stderr, "broker:", exit.msg)
		}
		return exit.code
	default:
		fmt.Fprintln(stderr, "broker:", err)
		return 1
	}
}

// exitError ends the command with an exit code other than 1, and a message
// unless msg is empty.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.msg
}

// parseFlags parses flags that may appear before, between or after
// positional arguments, and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}
