package main

// The control socket lets the CLI act on a running daemon, which holds the
// database lock. One JSON request and one JSON response per connection.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
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
	// Credentials are what `broker login` obtained (op "login").
	Credentials *broker.Credentials `json:"credentials,omitempty"`
	// Scope is the token's scope (op "token"); "" is the account's own.
	Scope string `json:"scope,omitempty"`
}

type controlResponse struct {
	Error        string                    `json:"error,omitempty"`
	Password     string                    `json:"password,omitempty"`
	AppPassword  *broker.AppPasswordInfo   `json:"app_password,omitempty"`
	AppPasswords []*broker.AppPasswordInfo `json:"app_passwords,omitempty"`
	Stats        *daemonStats              `json:"stats,omitempty"`
	// Accounts are the mailboxes a login or logout affected.
	Accounts []string            `json:"accounts,omitempty"`
	Statuses []broker.Status     `json:"statuses,omitempty"`
	Token    *broker.IssuedToken `json:"token,omitempty"`
	// BackupBytes is the length of the database copy (op "backup") that
	// follows the response's line on the connection.
	BackupBytes int64 `json:"backup_bytes,omitempty"`

	// Reload summarises what a reload changed (op "reload").
	Reload string `json:"reload,omitempty"`

	// payload is written raw after the JSON line: the backup.
	payload []byte
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

// controlAdmin is everything the control socket serves.
type controlAdmin interface {
	appPasswordAdmin
	accountAdmin
}

var (
	_ controlAdmin = localBroker{}
	_ controlAdmin = (*controlClient)(nil)
)

// controlSocketPath is where the daemon listens and the CLI dials: the
// config's control_socket, whose default is a rule of the configuration
// alone (config.DefaultControlSocketFor), so that root's CLI in a shell
// finds the socket of a daemon that systemd started. A Config built by hand
// (tests) leaves it empty: state_dir/control.sock.
func controlSocketPath(cfg *config.Config) string {
	if cfg.ControlSocket != "" {
		return cfg.ControlSocket
	}
	return filepath.Join(cfg.StateDir, controlFile)
}

// errDaemonRunning: another daemon answers on the control socket.
var errDaemonRunning = errors.New("another broker is running")

// listenControl listens on path with mode 0600, owned by the daemon's
// user. Its directory is made (mode 0700) if missing; under systemd it is
// the unit's RuntimeDirectory.
func listenControl(path string) (net.Listener, error) {
	// A socket left by a daemon that died is in the way; a live one is not
	// ours to take (the database lock already refused a second daemon).
	if conn, err := net.Dial("unix", path); err == nil {
		conn.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, errDaemonRunning)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, &configError{fmt.Errorf("control socket %s: %w (the unit's RuntimeDirectory=broker makes /run/broker; or set control_socket)", path, err)}
	}
	os.Remove(path)
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, &configError{fmt.Errorf("control socket: %w", err)}
	}
	return l, nil
}

// controlServer answers the CLI on the control socket.
type controlServer struct {
	admin controlAdmin
	stats func() *daemonStats
	// backup writes a consistent copy of the database (store.DB.Backup).
	backup func(io.Writer) (int64, error)
	// reload re-reads the configuration (op "reload"); nil: unsupported.
	reload func() (string, error)
	log    *slog.Logger
	// uid is the daemon's own user, which may ask for tokens besides root.
	uid int
}

func (s *controlServer) serve(l net.Listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(controlTimeout))
			uid, ok := peerUID(conn)
			resp := s.handle(conn, peer{uid, ok})
			if resp == nil {
				return // a liveness probe: connected and closed
			}
			if json.NewEncoder(conn).Encode(resp) == nil && resp.payload != nil {
				conn.Write(resp.payload)
			}
		}()
	}
}

// peer is who is on the other end of a control connection, when the
// kernel says.
type peer struct {
	uid   int
	known bool
}

// handle answers one request. It logs the operation and the mailbox,
// never credentials, passwords or tokens.
func (s *controlServer) handle(conn net.Conn, p peer) *controlResponse {
	var req controlRequest
	if err := json.NewDecoder(io.LimitReader(conn, maxControlBytes)).Decode(&req); err == io.EOF {
		return nil
	} else if err != nil {
		s.log.Info("control request failed", "err", "bad request: "+err.Error())
		return &controlResponse{Error: "bad request: " + err.Error()}
	}
	if req.Op != "stats" {
		// stats is polled by tools; the others are an administrator's acts.
		s.log.Info("control request", "op", req.Op, "mailbox", req.Mailbox, "peer_uid", p.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	resp := s.dispatch(ctx, &req, p)
	if resp.Error != "" {
		s.log.Info("control request failed", "op", req.Op, "err", resp.Error)
	}
	return resp
}

func (s *controlServer) dispatch(ctx context.Context, req *controlRequest, p peer) *controlResponse {
	var resp controlResponse
	var err error
	admin := s.admin
	switch req.Op {
	case "app-password.add":
		resp.AppPassword, resp.Password, err = admin.AddAppPassword(ctx, req.Mailbox, req.Label)
	case "app-password.list":
		resp.AppPasswords, err = admin.AppPasswords(ctx, req.Mailbox)
	case "app-password.revoke":
		err = admin.RevokeAppPassword(ctx, req.Mailbox, req.ID)
	case "login":
		resp.Accounts, err = admin.SignedIn(ctx, req.Mailbox, req.Credentials)
	case "logout":
		resp.Accounts, err = admin.Logout(ctx, req.Mailbox)
	case "status":
		resp.Statuses, err = admin.Statuses(ctx, req.Mailbox)
	case "token":
		if err = tokenPeerAllowed(p, s.uid); err == nil {
			resp.Token, err = admin.AccessToken(ctx, req.Mailbox, req.Scope)
		}
	case "stats":
		resp.Stats = s.stats()
	case "backup":
		if err = backupPeerAllowed(p, s.uid); err == nil {
			err = s.backupTo(&resp)
		}
	case "retry":
		err = retryAccount(admin, req.Mailbox)
	case "reload":
		if s.reload == nil {
			err = errors.New("this daemon cannot reload its configuration")
		} else {
			resp.Reload, err = s.reload()
		}
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if err != nil {
		resp.Error = err.Error()
	}
	return &resp
}

// backupTo copies the database into resp. The copy is made in memory, so
// that the response can say its length before the bytes: the CLI tells a
// complete backup from one cut short. broker's database is small (accounts
// and app passwords), a few megabytes at most.
func (s *controlServer) backupTo(resp *controlResponse) error {
	if s.backup == nil {
		return errors.New("this daemon cannot make backups")
	}
	var buf bytes.Buffer
	n, err := s.backup(&buf)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	resp.BackupBytes, resp.payload = n, buf.Bytes()
	return nil
}

// backupPeerAllowed lets only root and the daemon's own user (uid self)
// copy the database: it holds sealed tokens and app password hashes.
func backupPeerAllowed(p peer, self int) error {
	switch {
	case !p.known:
		return errors.New("backups are only made for root and the broker service's user, and the caller's user could not be determined")
	case p.uid == 0 || p.uid == self:
		return nil
	}
	return fmt.Errorf("backups are only made for root and the broker service's user (uid %d), not for uid %d", self, p.uid)
}

func (p peer) String() string {
	if !p.known {
		return "unknown"
	}
	return strconv.Itoa(p.uid)
}

// tokenPeerAllowed lets only root and the daemon's own user (uid self) have
// access tokens, whatever the socket's mode lets connect.
func tokenPeerAllowed(p peer, self int) error {
	switch {
	case !p.known:
		return errors.New("access tokens are only handed to root and the broker service's user, and the caller's user could not be determined")
	case p.uid == 0 || p.uid == self:
		return nil
	}
	return fmt.Errorf("access tokens are only handed to root and the broker service's user (uid %d), not to uid %d", self, p.uid)
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

func (c *controlClient) SignedIn(ctx context.Context, mailbox string, creds *broker.Credentials) ([]string, error) {
	resp, err := c.do(ctx, &controlRequest{Op: "login", Mailbox: mailbox, Credentials: creds})
	if err != nil {
		return nil, err
	}
	return resp.Accounts, nil
}

func (c *controlClient) Logout(ctx context.Context, mailbox string) ([]string, error) {
	resp, err := c.do(ctx, &controlRequest{Op: "logout", Mailbox: mailbox})
	if err != nil {
		return nil, err
	}
	return resp.Accounts, nil
}

func (c *controlClient) Statuses(ctx context.Context, mailbox string) ([]broker.Status, error) {
	resp, err := c.do(ctx, &controlRequest{Op: "status", Mailbox: mailbox})
	if err != nil {
		return nil, err
	}
	return resp.Statuses, nil
}

func (c *controlClient) AccessToken(ctx context.Context, mailbox, scope string) (*broker.IssuedToken, error) {
	resp, err := c.do(ctx, &controlRequest{Op: "token", Mailbox: mailbox, Scope: scope})
	if err != nil {
		return nil, err
	}
	if resp.Token == nil {
		return nil, errors.New("control socket: the daemon answered without a token")
	}
	return resp.Token, nil
}

// Backup has the daemon copy its database, consistently while it serves,
// and writes the copy to w. It returns the number of bytes written.
func (c *controlClient) Backup(ctx context.Context, w io.Writer) (int64, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return 0, fmt.Errorf("control socket: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(controlTimeout))
	if err := json.NewEncoder(conn).Encode(&controlRequest{Op: "backup"}); err != nil {
		return 0, fmt.Errorf("control socket: %w", err)
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return 0, fmt.Errorf("control socket: %w", err)
	}
	var resp controlResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		return 0, fmt.Errorf("control socket: %w", err)
	}
	if resp.Error != "" {
		return 0, errors.New(resp.Error)
	}
	if resp.BackupBytes <= 0 {
		return 0, errors.New("control socket: the daemon answered without a backup")
	}
	n, err := io.CopyN(w, r, resp.BackupBytes)
	if err != nil {
		return n, fmt.Errorf("backup cut short after %d of %d bytes: %w", n, resp.BackupBytes, err)
	}
	return n, nil
}
