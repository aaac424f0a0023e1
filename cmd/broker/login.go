package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"golang.org/x/term"
)

const loginUsage = `usage: broker login [-config FILE] [-loopback | -paste] [-port N] MAILBOX

Signs in the account of MAILBOX with its flow (flow = ... in broker.toml)
and hands the tokens to the running daemon, which uses them from its next
session on, or stores them when no daemon runs. Accounts that share the
sign-in (the same app and login_user) are signed in together.

  device_code         prints a page and a code to enter on any device, and
                      waits (Ctrl-C cancels)
  auth_code           prints an address to open in a browser. Paste mode (the
                      default without DISPLAY or WAYLAND_DISPLAY): the browser
                      ends on a page that fails to load; paste its address
                      back. Loopback mode (the default with a display): broker
                      receives the browser on http://localhost:PORT/
  password            warns, then asks for the user's password without echo
                      (or reads one line from standard input)
  client_credentials  nobody signs in: checks that broker gets a token

Exit status: 0 signed in, 1 error, 2 usage, 130 cancelled.

flags:
`

// signInTimeout bounds a browser sign-in in loopback mode.
const signInTimeout = 10 * time.Minute

var errCancelled = &exitError{code: 130, msg: "sign-in cancelled"}

func loginCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs, configPath := newCommand("login", loginUsage, stderr)
	loopback := fs.Bool("loopback", false, "auth_code: receive the browser on a local port (default with a display)")
	paste := fs.Bool("paste", false, "auth_code: paste the address the browser ends on (default without a display)")
	port := fs.Int("port", 0, "auth_code -loopback: the `port` to listen on; 0 picks a free one")
	mailbox, err := mailboxArg(fs, args)
	if err != nil {
		return err
	}
	if *loopback && *paste {
		return errors.New("-loopback and -paste exclude each other")
	}
	if *port < 0 || *port > 65535 {
		return fmt.Errorf("-port %d is not a port", *port)
	}
	cfg, acct, err := loadAccount(*configPath, mailbox)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !acct.Delegated() {
		return checkAppOnly(ctx, cfg, acct, stdout)
	}
	// Find out now, not after the sign-in, whether its result can be kept.
	_, done, err := openAdmin(cfg)
	if err != nil {
		return err
	}
	done()

	s, err := broker.NewSignIn(acct)
	if err != nil {
		return err
	}
	tio := &loginIO{in: newLineReader(stdin), stdin: stdin, out: stdout, err: stderr, tty: isTerminal(stderr)}
	var creds *broker.Credentials
	switch acct.Flow {
	case config.FlowDeviceCode:
		creds, err = loginDeviceCode(ctx, s, acct, tio, time.Now, sleepCtx)
	case config.FlowAuthCode:
		flow := signInFlow{s}
		if *loopback || (!*paste && hasDisplay()) {
			creds, err = loginLoopback(ctx, flow, acct, *port, hasDisplay(), tio)
		} else {
			creds, err = loginPaste(ctx, flow, acct, tio)
		}
	case config.FlowPassword:
		creds, err = loginPassword(ctx, s, acct, tio)
	default:
		err = fmt.Errorf("%s: flow %s has no sign-in", acct.Mailbox, acct.Flow)
	}
	if err != nil {
		if ctx.Err() != nil {
			return errCancelled
		}
		return err
	}
	return handOver(ctx, cfg, acct, creds, stdout)
}

// handOver gives the credentials to the daemon, or stores them.
func handOver(ctx context.Context, cfg *config.Config, acct *config.Account, creds *broker.Credentials, stdout io.Writer) error {
	admin, ctx, done, err := adminSession(ctx, cfg)
	if err != nil {
		return err
	}
	defer done()
	accounts, err := admin.SignedIn(ctx, acct.Mailbox, creds)
	if err != nil {
		return err
	}
	user := creds.User
	if user == "" {
		user = acct.LoginUser
	}
	fmt.Fprintf(stdout, "Signed in as %s; accounts now served: %s\n", user, strings.Join(accounts, ", "))
	return nil
}

// checkAppOnly answers `broker login` for an app-only account: nobody
// signs in, so it checks instead that broker gets a token.
func checkAppOnly(ctx context.Context, cfg *config.Config, acct *config.Account, stdout io.Writer) error {
	admin, ctx, done, err := adminSession(ctx, cfg)
	if err != nil {
		return err
	}
	defer done()
	tok, err := admin.AccessToken(ctx, acct.Mailbox, "")
	if err != nil {
		return fmt.Errorf("%s uses flow %s: nobody signs in, broker gets its tokens with app %s's credential, and that failed: %w", acct.Mailbox, acct.Flow, acct.App.Name, err)
	}
	fmt.Fprintf(stdout, "%s uses flow %s: nobody signs in; broker gets its tokens with app %s's credential.\nChecked: broker got a token (expires %s).\n",
		acct.Mailbox, acct.Flow, acct.App.Name, relative(tok.Expires, time.Now()))
	return nil
}

// loginIO is the terminal of a sign-in.
type loginIO struct {
	in    *lineReader
	stdin io.Reader // for reading a password without echo
	out   io.Writer // what the administrator must see and do
	err   io.Writer // warnings and progress
	tty   bool      // err is a terminal: progress rewrites one line
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func hasDisplay() bool { return os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != "" }

// lineReader reads lines in the background, so that a wait for one ends
// on Ctrl-C. It starts reading at the first wait only.
type lineReader struct {
	r     io.Reader
	once  sync.Once
	lines chan string
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{r: r, lines: make(chan string)}
}

var errInputEnded = errors.New("standard input ended")

// next returns the next line without its line ending.
func (l *lineReader) next(ctx context.Context) (string, error) {
	l.once.Do(func() { go l.read() })
	select {
	case line, ok := <-l.lines:
		if !ok {
			return "", errInputEnded
		}
		return line, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (l *lineReader) read() {
	defer close(l.lines)
	br := bufio.NewReader(l.r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			l.lines <- strings.TrimRight(line, "\r\n")
		}
		if err != nil {
			return
		}
	}
}
