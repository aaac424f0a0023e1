package test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

// rss returns a process's resident memory in bytes.
func rss(b testing.TB, pid int) int64 {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
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
	pid := d.cmd.Process.Pid

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
	for b.Loop() {
		warm := open()
		before := rss(b, pid)
		clients := make([]*imapclient.Client, 0, sessions)
		for range sessions {
			clients = append(clients, open())
		}
		after := rss(b, pid)
		b.ReportMetric(float64(after-before)/sessions, "bytes/idle-session")
		for _, c := range clients {
			c.Close()
		}
		warm.Close()
	}
}
