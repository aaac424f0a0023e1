package main

// The control socket lets the CLI act on a running daemon, which holds the
// database lock. One JSON request and one JSON response per connection.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/mailbroker/broker/broker"
)

const (
	controlTimeout  = 30 * time.Second
	maxControlBytes = 64 << 10
)

type controlRequest struct {
	Op      string `json:"op"`
	Mailbox string `json:"mailbox,omitempty"`
	Label   string `json:"label,omitempty"`
	ID      string `json:"id,omitempty"`
}

type controlResponse struct {
	Error        string                    `json:"error,omitempty"`
	Password     string                    `json:"password,omitempty"`
	AppPassword  *broker.AppPasswordInfo   `json:"app_password,omitempty"`
	AppPasswords []*broker.AppPasswordInfo `json:"app_passwords,omitempty"`
	Stats        *daemonStats              `json:"stats,omitempty"`
}

// daemonStats is what a running daemon holds, for operators and for the
// memory benchmark.
type daemonStats struct {
	Sessions     int    `json:"sessions"` // every protocol's
	IMAPSessions int    `json:"imap_sessions"`
	SMTPSessions int    `json:"smtp_sessions"`
	Goroutines   int    `json:"goroutines"`
	HeapBytes    uint64 `json:"heap_bytes"`  // in use after a collection
	StackBytes   uint64 `json:"stack_bytes"` // goroutine stacks
}

// appPasswordAdmin is implemented by *broker.Broker (no daemon running) and
// by controlClient (through the daemon).
type appPasswordAdmin interface {
	AddAppPassword(ctx context.Context, mailbox, label string) (*broker.AppPasswordInfo, string, error)
	AppPasswords(ctx context.Context, mailbox string) ([]*broker.AppPasswordInfo, error)
	RevokeAppPassword(ctx context.Context, mailbox, id string) error
}

func listenControl(path string) (net.Listener, error) {
	// A socket left by a daemon that died is in the way; a live one is not
	// ours to take (the database lock already refused a second daemon).
	if conn, err := net.Dial("unix", path); err == nil {
		conn.Close()
		return nil, fmt.Errorf("control socket %s: another broker is running", path)
	}
	os.Remove(path)
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return l, nil
}

func serveControl(l net.Listener, admin appPasswordAdmin, stats func() *daemonStats, log *slog.Logger) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(controlTimeout))
			resp := handleControl(conn, admin, stats)
			if resp == nil {
				return // a liveness probe: connected and closed
			}
			if resp.Error != "" {
				log.Info("control request failed", "err", resp.Error)
			}
			json.NewEncoder(conn).Encode(resp)
		}()
	}
}

func handleControl(conn net.Conn, admin appPasswordAdmin, stats func() *daemonStats) *controlResponse {
	var req controlRequest
	if err := json.NewDecoder(io.LimitReader(conn, maxControlBytes)).Decode(&req); err == io.EOF {
		return nil
	} else if err != nil {
		return &controlResponse{Error: "bad request: " + err.Error()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	var resp controlResponse
	var err error
	switch req.Op {
	case "app-password.add":
		resp.AppPassword, resp.Password, err = admin.AddAppPassword(ctx, req.Mailbox, req.Label)
	case "app-password.list":
		resp.AppPasswords, err = admin.AppPasswords(ctx, req.Mailbox)
	case "app-password.revoke":
		err = admin.RevokeAppPassword(ctx, req.Mailbox, req.ID)
	case "stats":
		resp.Stats = stats()
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if err != nil {
		resp.Error = err.Error()
	}
	return &resp
}

// controlClient talks to a running daemon.
type controlClient struct{ path string }

// dialControl returns a client when a daemon answers on path, and
// errNoDaemon when none runs.
func dialControl(path string) (*controlClient, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, errNoDaemon
		}
		return nil, fmt.Errorf("control socket: %w", err)
	}
	conn.Close()
	return &controlClient{path}, nil
}

var errNoDaemon = errors.New("no broker daemon is running")

func (c *controlClient) do(ctx context.Context, req *controlRequest) (*controlResponse, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(controlTimeout))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	var resp controlResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if resp.Error != "" {
		return nil, errors.New(resp.Error)
	}
	return &resp, nil
}

func (c *controlClient) AddAppPassword(ctx context.Context, mailbox, label string) (*broker.AppPasswordInfo, string, error) {
	resp, err := c.do(ctx, &controlRequest{Op: "app-password.add", Mailbox: mailbox, Label: label})
	if err != nil {
		return nil, "", err
	}
	return resp.AppPassword, resp.Password, nil
}

func (c *controlClient) AppPasswords(ctx context.Context, mailbox string) ([]*broker.AppPasswordInfo, error) {
	resp, err := c.do(ctx, &controlRequest{Op: "app-password.list", Mailbox: mailbox})
	if err != nil {
		return nil, err
	}
	return resp.AppPasswords, nil
}

func (c *controlClient) RevokeAppPassword(ctx context.Context, mailbox, id string) error {
	_, err := c.do(ctx, &controlRequest{Op: "app-password.revoke", Mailbox: mailbox, ID: id})
	return err
}
