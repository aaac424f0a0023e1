package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

// deviceFlow is the device code part of *broker.SignIn.
type deviceFlow interface {
	StartDeviceCode(ctx context.Context) (*broker.DeviceCode, error)
	PollDeviceCode(ctx context.Context, dc *broker.DeviceCode, wait func(context.Context, time.Duration) error) (*broker.Credentials, error)
}

// loginDeviceCode shows the page and the code, then waits for the
// administrator, showing the time left.
// now and sleep are the clock, time.Now and sleepCtx outside tests.
func loginDeviceCode(ctx context.Context, s deviceFlow, acct *config.Account, tio *loginIO, now func() time.Time, sleep func(context.Context, time.Duration) error) (*broker.Credentials, error) {
	dc, err := s.StartDeviceCode(ctx)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(tio.out, "To sign in %s, open this page on any device:\n\n    %s\n\nand enter the code\n\n    %s\n\nthen sign in as %s.\n",
		describeAccount(acct), dc.VerificationURI, dc.UserCode, acct.LoginUser)
	if dc.Message != "" {
		fmt.Fprintf(tio.out, "(Microsoft's instructions: %s)\n", dc.Message)
	}
	fmt.Fprintln(tio.out)
	cd := &countdown{w: tio.err, tty: tio.tty, expires: dc.ExpiresAt, now: now, sleep: sleep}
	creds, err := s.PollDeviceCode(ctx, dc, cd.wait)
	cd.finish()
	return creds, err
}

// describeAccount names an account for the administrator, with the
// delegate who signs in for a shared mailbox.
func describeAccount(acct *config.Account) string {
	if acct.LoginUser != "" && acct.LoginUser != acct.Mailbox {
		return fmt.Sprintf("%s (signed in by %s)", acct.Mailbox, acct.LoginUser)
	}
	return acct.Mailbox
}

// countdown shows how long a device code stays valid: on a terminal one
// line rewritten every second, otherwise a line every progressEvery.
type countdown struct {
	w       io.Writer
	tty     bool
	expires time.Time
	now     func() time.Time
	sleep   func(context.Context, time.Duration) error

	shown     bool
	lastShown time.Time
}

const progressEvery = 30 * time.Second

// wait is PollDeviceCode's wait between polls.
func (c *countdown) wait(ctx context.Context, d time.Duration) error {
	end := c.now().Add(d)
	for {
		c.show()
		left := end.Sub(c.now())
		if left <= 0 {
			return nil
		}
		if err := c.sleep(ctx, min(left, time.Second)); err != nil {
			return err
		}
	}
}

func (c *countdown) show() {
	now := c.now()
	left := max(c.expires.Sub(now), 0)
	if c.tty {
		fmt.Fprintf(c.w, "\rWaiting for the sign-in: %s left ", clock(left))
		c.shown = true
		return
	}
	if c.lastShown.IsZero() || now.Sub(c.lastShown) >= progressEvery {
		fmt.Fprintf(c.w, "Waiting for the sign-in: %s left\n", clock(left))
		c.lastShown = now
	}
}

// finish ends the terminal's progress line.
func (c *countdown) finish() {
	if c.tty && c.shown {
		fmt.Fprint(c.w, "\r\033[K")
	}
}

// clock formats d as m:ss.
func clock(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
