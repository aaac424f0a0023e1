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
  version       print the version

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
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = serveCmd(rest, stdout, stderr)
	case "app-password":
		err = appPasswordCmd(rest, stdout, stderr)
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
	default:
		fmt.Fprintln(stderr, "broker:", err)
		return 1
	}
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
