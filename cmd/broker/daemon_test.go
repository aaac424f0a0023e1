package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

// logSink collects log lines and wakes waiters on each write.
type logSink struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // closed and replaced on every write
}

func newLogSink() *logSink { return &logSink{written: make(chan struct{})} }

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.written)
	s.written = make(chan struct{})
	return s.buf.Write(p)
}

// waitFor waits until the log has a line matching re and returns the log.
func (s *logSink) waitFor(t *testing.T, re *regexp.Regexp) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		log, written := s.buf.String(), s.written
		s.mu.Unlock()
		if re.MatchString(log) {
			return log
		}
		select {
		case <-written:
		case <-timeout:
			t.Fatalf("timed out waiting for %v in the log:\n%s", re, log)
		}
	}
}

// The daemon serves IMAP and SMTP side by side, logs each listener with
// its protocol before "ready", counts sessions per protocol and stops both.
func TestDaemonServesIMAPAndSMTP(t *testing.T) {
	cfg := &config.Config{
		StateDir: t.TempDir(),
		IMAP:     &config.IMAP{Listener: config.Listener{Listen: []string{"127.0.0.1:0"}, Upstream: "127.0.0.1:993"}},
		SMTP: &config.SMTP{
			Listener:                 config.Listener{Listen: []string{"127.0.0.1:0", "127.0.0.1:0"}, Upstream: "127.0.0.1:587"},
			MaxConnectionsPerMailbox: config.DefaultSMTPMaxConnectionsPerMailbox,
			ConnectionWait:           config.DefaultSMTPConnectionWait,
		},
	}
	logs := newLogSink()
	log := slog.New(slog.NewTextHandler(logs, nil))
	d, err := newDaemon(cfg, log, broker.Options{Key: bytes.Repeat([]byte{1}, broker.KeySize)})
	if err != nil {
		t.Fatalf("newDaemon: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.run(ctx) }()

	out := logs.waitFor(t, regexp.MustCompile(`msg=ready\n`))
	listening := regexp.MustCompile(`msg=listening proto=(\w+) addr=127\.0\.0\.1:\d+$`)
	var protos []string
	for _, line := range strings.Split(out, "\n") {
		if m := listening.FindStringSubmatch(line); m != nil {
			protos = append(protos, m[1])
		}
		if strings.Contains(line, "msg=ready") {
			break
		}
	}
	if got, want := strings.Join(protos, " "), "imap smtp smtp"; got != want {
		t.Fatalf("got listeners %q before ready, want %q:\n%s", got, want, out)
	}

	data, err := json.Marshal(d.stats())
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"sessions", "imap_sessions", "smtp_sessions"} {
		if n, ok := st[key].(float64); !ok || n != 0 {
			t.Fatalf("stats %s: got %v, want 0 in %s", key, st[key], data)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(config.DefaultDrainTimeout + 10*time.Second):
		t.Fatal("run did not return after cancel")
	}
}
