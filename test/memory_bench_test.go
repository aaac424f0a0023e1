package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/mailbroker/broker/test/m365sim"
)

var (
	plainBinOnce sync.Once
	plainBin     string
	plainBinErr  error
)

// plainBroker builds broker without the race detector, which would
// multiply its memory use.
func plainBroker(b testing.TB) string {
	plainBinOnce.Do(func() {
		plainBin = filepath.Join(filepath.Dir(brokerBin), "broker-plain")
		out, err := exec.Command("go", "build", "-o", plainBin, "../cmd/broker").CombinedOutput()
		if err != nil {
			plainBinErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if plainBinErr != nil {
		b.Fatal(plainBinErr)
	}
	return plainBin
}

// daemonStats asks a running daemon, over its control socket, for its live
// memory after a collection: heap and goroutine stacks together.
func daemonStats(b testing.TB, d *daemon) (sessions int, bytes uint64) {
	b.Helper()
	st := daemonMemory(b, d)
	return st.Sessions, st.HeapBytes + st.StackBytes
}

// memoryStats are the control socket's stats of a daemon's memory.
type memoryStats struct {
	Sessions   int    `json:"sessions"`
	HeapBytes  uint64 `json:"heap_bytes"`
	StackBytes uint64 `json:"stack_bytes"`
}

func daemonMemory(b testing.TB, d *daemon) memoryStats {
	b.Helper()
	conn, err := net.Dial("unix", filepath.Join(filepath.Dir(d.config), "state", "control.sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	var resp struct {
		Error string
		Stats memoryStats
	}
	if err := json.NewEncoder(conn).Encode(map[string]string{"op": "stats"}); err != nil {
		b.Fatal(err)
	}
	if err := json.NewDecoder(conn).Decode(&resp); err != nil || resp.Error != "" {
		b.Fatalf("stats: %v %s", err, resp.Error)
	}
	return resp.Stats
}

// idleSessionsEnv sets how many sessions BenchmarkIdleSessionMemory opens
// (issue #10 asks for 10,000).
const idleSessionsEnv = "BROKER_IDLE_SESSIONS"

// sessionsPerMailbox is the most IMAP sessions one mailbox may hold
// (max_connections_per_mailbox's ceiling): the benchmark spreads its
// sessions over as many mailboxes as that takes.
const sessionsPerMailbox = 100

// fdsPerSession are the descriptors a spliced session costs each process
// of the benchmark: the broker holds the client's and upstream's sockets,
// the test process the client's end and the simulated upstream's.
// fdsSpare are the processes' other descriptors (listeners, the store,
// pipes, the runtime's).
const (
	fdsPerSession = 2
	fdsSpare      = 64
)

// BenchmarkIdleSessionMemory opens many IDLE sessions (1000, or
// $BROKER_IDLE_SESSIONS) through a broker process and reports how much its
// heap and goroutine stacks grew per session. Both processes need two
// descriptors per session: the benchmark raises its soft RLIMIT_NOFILE to
// the hard limit (the broker inherits it) and skips if that is too few.
func BenchmarkIdleSessionMemory(b *testing.B) {
	sessions := 1000
	if v := os.Getenv(idleSessionsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a positive number", idleSessionsEnv, v)
		}
		sessions = n
	}
	if err := raiseFileLimit(uint64(fdsPerSession*sessions + fdsSpare)); err != nil {
		b.Skipf("%d sessions: %v", sessions, err)
	}
	mailboxes := make([]string, (sessions+1+sessionsPerMailbox-1)/sessionsPerMailbox)
	for i := range mailboxes {
		mailboxes[i] = fmt.Sprintf("idle%d@contoso.com", i)
	}
	env := newInProcess(b, io.Discard)
	env.Entra.AddApp(m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: env.Secret,
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: mailboxes,
	})
	for _, m := range mailboxes {
		if err := env.Upstream.AddMailbox(m); err != nil {
			b.Fatal(err)
		}
	}
	dir := b.TempDir()
	ca := writeFile(b, dir, "ca.pem", env.Upstream.CACertPEM())
	secret := writeFile(b, dir, "secret", []byte(env.Secret))
	cfg := brokerConfig(filepath.Join(dir, "state"), env.Upstream.Addr(), ca, env.Entra.URL(), tenant, clientID, secret, mailboxes[0])
	cfg = strings.Replace(cfg, "[imap]\n", fmt.Sprintf("[limits]\nmax_connections = %d\nmax_connections_per_source = %[1]d\n\n[imap]\nmax_connections_per_mailbox = %d\n",
		sessions+10, sessionsPerMailbox), 1)
	for _, m := range mailboxes[1:] {
		cfg += fmt.Sprintf("\n[[account]]\nmailbox = %q\napp = \"contoso\"\nflow = \"client_credentials\"\n", m)
	}
	d := startDaemonBin(b, plainBroker(b), dir, cfg)
	passwords := make([]string, len(mailboxes))
	for i, m := range mailboxes {
		_, passwords[i] = d.addAppPassword(m)
	}

	open := func(i int) (*imapclient.Client, error) {
		m := i / sessionsPerMailbox
		c, err := imapclient.DialInsecure(d.IMAPAddr, nil)
		if err != nil {
			return nil, err
		}
		if err := c.Login(mailboxes[m], passwords[m]).Wait(); err != nil {
			c.Close()
			return nil, fmt.Errorf("session %d: %w", i, err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			c.Close()
			return nil, fmt.Errorf("session %d: %w", i, err)
		}
		if _, err := c.Idle(); err != nil {
			c.Close()
			return nil, fmt.Errorf("session %d: %w", i, err)
		}
		return c, nil
	}
	// Once: later rounds would reuse the memory the first one grew into.
	measured := false
	for b.Loop() {
		if measured {
			continue
		}
		measured = true
		warm, err := open(sessions)
		if err != nil {
			b.Fatal(err)
		}
		before := daemonMemory(b, d)
		clients := make([]*imapclient.Client, sessions)
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			failures int
			firstErr error
		)
		// A few logins at a time, as clients reconnecting after a restart
		// would; the broker's pre-login caps are not what is measured.
		sem := make(chan struct{}, 8)
		for i := range clients {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				c, err := open(i)
				if err != nil {
					mu.Lock()
					if failures++; firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				clients[i] = c
			})
		}
		wg.Wait()
		if failures > 0 {
			b.Fatalf("%d of %d sessions failed, the first: %v", failures, sessions, firstErr)
		}
		after := daemonMemory(b, d)
		if after.Sessions != sessions+1 {
			b.Fatalf("daemon holds %d sessions, want %d", after.Sessions, sessions+1)
		}
		heap := float64(after.HeapBytes) - float64(before.HeapBytes)
		stack := float64(after.StackBytes) - float64(before.StackBytes)
		b.ReportMetric((heap+stack)/float64(sessions), "bytes/idle-session")
		b.ReportMetric(heap/float64(sessions), "heap-bytes/idle-session")
		b.ReportMetric(stack/float64(sessions), "stack-bytes/idle-session")
		b.ReportMetric(float64(sessions), "sessions")
		for _, c := range clients {
			c.Close()
		}
		warm.Close()
	}
}

// raiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit if it is
// below need, and fails if the hard limit is.
func raiseFileLimit(need uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= need {
		return nil
	}
	if l.Max < need {
		return fmt.Errorf("needs %d file descriptors per process, and RLIMIT_NOFILE's hard limit is %d", need, l.Max)
	}
	l.Cur = l.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}
