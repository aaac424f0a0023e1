// Command broker lets legacy IMAP clients log in to Microsoft 365 with app
// passwords while broker itself speaks OAuth 2.0 (XOAUTH2) upstream.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"syscall"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/store"
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
  doctor        check config, network, TLS, token, IMAP and SMTP logins; print fixes
  backup        write a consistent copy of the database to FILE (mode 0600), while
                the daemon runs or not
  reload        have the running daemon re-read its configuration (as SIGHUP);
                print what changed, or exit 1 with why the file was rejected
  version       print the version

login, logout, status, token, app-password and backup go through the running
daemon's control socket when it runs, and open the database otherwise. The
socket is control_socket, by default /run/broker/control.sock when state_dir
is /var/lib/broker (the default), else state_dir/control.sock.

exit codes: 0 success (serve: stopped by SIGTERM or SIGINT), 1 error, 2 usage,
3 and 4 (status only) as above, 75 temporary (the database is in use by
another broker, a listen address is in use: try again), 78 configuration
(the file, a file it names, a listen address, permissions), 130 sign-in
cancelled (Ctrl-C).

Run 'broker <command> -h' for a command's flags.
`

// Exit codes; 75 and 78 are sysexits(3)'s EX_TEMPFAIL and EX_CONFIG, which
// the unit's RestartPreventExitStatus=78 tells apart: a configuration error
// is not restarted every few seconds, a temporary failure is.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitTempFail = 75
	exitConfig   = 78
)

// errUsage makes main print the usage and exit 2.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
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
	case "doctor":
		err = doctorCmd(rest, stdout, stderr)
	case "backup":
		err = backupCmd(rest, stdout, stderr)
	case "reload":
		err = reloadCmd(rest, stdout, stderr)
	case "version", "-version", "--version":
		err = versionCmd(rest, stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "broker: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprint(stderr, usage)
		return exitUsage
	case errors.As(err, &exit):
		if exit.msg != "" {
			fmt.Fprintln(stderr, "broker:", exit.msg)
		}
		return exit.code
	default:
		fmt.Fprintln(stderr, "broker:", err)
		return exitCode(err)
	}
}

// exitCode tells a configuration error (78: restarting will not help) and a
// temporary failure (75: it may) from other errors (1).
func exitCode(err error) int {
	var ce *config.Error
	var cfgErr *configError
	var op *net.OpError
	switch {
	case errors.As(err, &ce), errors.As(err, &cfgErr):
		return exitConfig
	case errors.Is(err, store.ErrLocked), errors.Is(err, errDaemonRunning):
		return exitTempFail
	case errors.As(err, &op) && op.Op == "listen":
		// Another process holds the port; it may let go (an old broker
		// still draining). Any other address problem is the config's.
		if errors.Is(err, syscall.EADDRINUSE) {
			return exitTempFail
		}
		return exitConfig
	case errors.Is(err, fs.ErrPermission):
		// A file or directory broker's user may not use: the
		// installation's to fix, not a restart's.
		return exitConfig
	}
	return exitFailure
}

// configError is a problem with the configuration found after the file
// was read: a sealing key or socket that cannot be used. It exits 78.
type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

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
