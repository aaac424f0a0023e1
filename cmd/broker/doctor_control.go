package main

// The control operations broker doctor uses: stats, retry and token, each
// bounded by the caller's context rather than controlTimeout alone.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/mailbroker/broker/broker"
)

// retryAccount serves op "retry": the account's sign-in, if failing,
// requests a token at once.
func retryAccount(admin controlAdmin, mailbox string) error {
	lb, ok := admin.(localBroker)
	if !ok {
		return errors.New("retry is served by the daemon only")
	}
	return lb.RetryNow(mailbox)
}

// doCtx is do with the connection's deadline taken from ctx too.
func (c *controlClient) doCtx(ctx context.Context, req *controlRequest) (*controlResponse, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(controlTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	var resp controlResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil, fmt.Errorf("control socket: the daemon did not answer in time: %w", context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if resp.Error != "" {
		return nil, errors.New(resp.Error)
	}
	return &resp, nil
}

func (c *controlClient) stats(ctx context.Context) (*daemonStats, error) {
	ctx, cancel := context.WithTimeout(ctx, doctorStepTimeout)
	defer cancel()
	resp, err := c.doCtx(ctx, &controlRequest{Op: "stats"})
	if err != nil {
		return nil, err
	}
	if resp.Stats == nil {
		return nil, errors.New("control socket: no stats")
	}
	return resp.Stats, nil
}

// retry asks the daemon to retry mailbox's failing sign-in now.
func (c *controlClient) retry(ctx context.Context, mailbox string) error {
	_, err := c.doCtx(ctx, &controlRequest{Op: "retry", Mailbox: mailbox})
	return err
}

// token is AccessToken for the account's own scopes, bounded by ctx.
func (c *controlClient) token(ctx context.Context, mailbox string) (*broker.IssuedToken, error) {
	resp, err := c.doCtx(ctx, &controlRequest{Op: "token", Mailbox: mailbox})
	if err != nil {
		return nil, err
	}
	if resp.Token == nil {
		return nil, errors.New("control socket: the daemon answered without a token")
	}
	return resp.Token, nil
}
