package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"golang.org/x/term"
)

// passwordFlow is the password part of *broker.SignIn.
type passwordFlow interface {
	Password(ctx context.Context, password string) (*broker.Credentials, error)
}

const passwordWarning = `warning: the password flow (ROPC) cannot satisfy multi-factor authentication,
and Microsoft is retiring it: prefer flow = "device_code" or "auth_code".
broker checks the password by signing in with it, and seals it in its store,
so that it can sign in again by itself when the refresh token dies.
`

// loginPassword reads the user's password, without echo from a terminal,
// and signs in with it.
func loginPassword(ctx context.Context, s passwordFlow, acct *config.Account, tio *loginIO) (*broker.Credentials, error) {
	fmt.Fprint(tio.err, passwordWarning)
	password, err := readPassword(ctx, tio, "Password of "+acct.LoginUser+": ")
	if err != nil {
		return nil, err
	}
	return s.Password(ctx, password)
}

func readPassword(ctx context.Context, tio *loginIO, prompt string) (string, error) {
	f, ok := tio.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		line, err := tio.in.next(ctx)
		if errors.Is(err, errInputEnded) {
			return "", errors.New("standard input ended before the password")
		}
		return line, err
	}
	fd := int(f.Fd())
	state, err := term.GetState(fd)
	if err != nil {
		return "", err
	}
	fmt.Fprint(tio.err, prompt)
	type result struct {
		pw  []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		pw, err := term.ReadPassword(fd)
		done <- result{pw, err}
	}()
	select {
	case r := <-done:
		fmt.Fprintln(tio.err)
		return string(r.pw), r.err
	case <-ctx.Done():
		// ReadPassword turned echo off; give the terminal back as it was.
		term.Restore(fd, state)
		fmt.Fprintln(tio.err)
		return "", ctx.Err()
	}
}
