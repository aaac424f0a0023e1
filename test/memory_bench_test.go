package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"
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
// memory after a collection.
func daemonStats(b testing.TB, d *daemon) (sessions int, bytes uint64) {
	b.Helper()
	conn, err := net.Dial("unix", filepath.Join(filepath.Dir(d.config), "state", "control.sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	var resp struct {
		Error string
		Stats struct {
			Sessions   int    `json:"sessions"`
			HeapBytes  uint64 `json:"heap_bytes"`
			StackBytes uint64 `json:"stack_bytes"`
		}
	}
	if err := json.NewEncoder(conn).Encode(map[string]string{"op": "stats"}); err != nil {
		b.Fatal(err)
	}
	if err := json.NewDecoder(conn).Decode(&resp); err != nil || resp.Error != "" {
		b.Fatalf("stats: %v %s", err, resp.Error)
	}
	return resp.Stats.Sessions, resp.Stats.HeapBytes + resp.Stats.StackBytes
}

// BenchmarkIdleSessionMemory opens many IDLE sessions through a broker
// process and reports how much its resident memory grew per session.
func BenchmarkIdleSessionMemory(b *testing.B) {
	const sessions = 1000
	env := newInProcess(b, io.Discard)
	dir := b.TempDir()
	ca := writeFile(b, dir, "ca.pem", env.Upstream.CACertPEM())
	secret := writeFile(b, dir, "secret", []byte(env.Secret))
	d := startDaemonBin(b, plainBroker(b), dir, brokerConfig(filepath.Join(dir, "state"), env.Upstream.Addr(), ca, env.Entra.URL(), tenant, clientID, secret, mailbox))
	_, password := d.addAppPassword(mailbox)

	open := func() *imapclient.Client {
		c, err := imapclient.DialInsecure(d.IMAPAddr, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Login(mailbox, password).Wait(); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Idle(); err != nil {
			b.Fatal(err)
		}
		return c
	}
	// Once: later rounds would reuse the memory the first one grew into.
	measured := false
	for b.Loop() {
		if measured {
			continue
		}
		measured = true
		warm := open()
		_, before := daemonStats(b, d)
		clients := make([]*imapclient.Client, 0, sessions)
		for range sessions {
			clients = append(clients, open())
		}
		n, after := daemonStats(b, d)
		if n != sessions+1 {
			b.Fatalf("daemon holds %d sessions, want %d", n, sessions+1)
		}
		b.ReportMetric(float64(after-before)/sessions, "bytes/idle-session")
		for _, c := range clients {
			c.Close()
		}
		warm.Close()
	}
}
