package test

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

const (
	// bigMessageBytes is the size of the big message: about 50 MiB.
	bigMessageBytes = 50 << 20
	// bigMessageMaxGrowth bounds how much broker's peak resident memory may
	// grow while it relays the big message. Measured: 0.1-0.2 MiB (see the
	// test's log); relaying streams through small buffers.
	bigMessageMaxGrowth = 8 << 20
)

// bigMessage is a generated message of about size bytes, CRLF lines of 80
// octets, none starting with a dot, produced as it is read.
type bigMessage struct {
	size int64
	left []byte // of the header or the current line
	next int64  // number of the next body line
	rest int64  // body lines still to make
}

func newBigMessage(size int64) *bigMessage {
	header := []byte("From: <" + mailbox + ">\r\nTo: <" + mailbox + ">\r\nSubject: big\r\n\r\n")
	lines := (size - int64(len(header))) / 80
	return &bigMessage{size: int64(len(header)) + lines*80, left: header, rest: lines}
}

// Size is the message's exact length.
func (m *bigMessage) Size() int64 { return m.size }

func (m *bigMessage) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(m.left) == 0 {
			if m.rest == 0 {
				break
			}
			m.left = fmt.Appendf(m.left[:0], "%010d %s\r\n", m.next, strings.Repeat(string(rune('a'+m.next%26)), 67))
			m.next++
			m.rest--
		}
		c := copy(p[n:], m.left)
		m.left = m.left[c:]
		n += c
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// vmHWM returns the peak resident set size of process pid.
func vmHWM(t testing.TB, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// resetHWM sets the peak resident set size of process pid to its current
// one (Linux ≥ 4.0), so that a later peak is what came after: argon2's
// ~19 MiB at the first login, long freed, would otherwise hide growth
// below it.
func resetHWM(t testing.TB, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("resetting the peak RSS: %v", err)
	}
}

// sendBig sends a generated message of about size bytes over a
// connection that has authenticated, and returns its exact size and
// SHA-256. Its lines need no dot-stuffing, so it goes out as it is made.
func sendBig(t testing.TB, c *rawSMTP, size int64) (int64, [32]byte) {
	t.Helper()
	c.cmd("MAIL FROM:<"+mailbox+">", "250 ")
	c.cmd("RCPT TO:<"+mailbox+">", "250 ")
	c.cmd("DATA", "354 ")
	msg := newBigMessage(size)
	h := sha256.New()
	c.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.CopyBuffer(c.conn, io.TeeReader(msg, h), make([]byte, 256<<10)); err != nil {
		t.Fatalf("sending the message: %v", err)
	}
	c.cmd(".", "250 ")
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return msg.Size(), sum
}

// measuredMemLimit is the GOMEMLIMIT of a broker whose memory is measured.
// Without one, the heap argon2 used and freed (tens of MiB) stays resident
// for a while, and a message buffered into it would not raise the peak;
// with it, the runtime returns freed memory at once and resident memory
// follows live memory. It does not change what a relay keeps alive.
const measuredMemLimit = "8MiB"

// bigMessageEnv is a non-race broker, run with GOMEMLIMIT=memLimit unless
// "", whose SMTP upstream keeps no message bytes, with one session that has
// already authenticated (argon2 takes its ~19 MiB once) and relayed a
// small message.
func bigMessageEnv(t testing.TB, memLimit string) (*smtpSimEnv, *rawSMTP) {
	t.Helper()
	if memLimit != "" {
		t.Setenv("GOMEMLIMIT", memLimit) // for the daemon started next
	}
	env := newSMTPSimEnv(t, smtpSimOptions{Bin: plainBroker(t), SMTP: m365sim.SMTPOptions{KeepBytes: 1 << 10}})
	c := dialRawSMTP(t, env.Daemon.SMTPAddr)
	c.login(mailbox, env.Password)
	sendBig(t, c, 64<<10)
	env.waitMessages(t, 1)
	return env, c
}

// TestSMTPRelay50MBMemory relays a 50 MiB message through a broker built
// without the race detector and checks that its peak resident memory grew
// by far less than the message, and that upstream got every byte.
func TestSMTPRelay50MBMemory(t *testing.T) {
	env, c := bigMessageEnv(t, measuredMemLimit)
	pid := env.Daemon.cmd.Process.Pid
	resetHWM(t, pid)
	before := vmHWM(t, pid)
	start := time.Now()
	size, sum := sendBig(t, c, bigMessageBytes)
	elapsed := time.Since(start)
	after := vmHWM(t, pid)
	growth := after - before
	t.Logf("relayed %d bytes in %v (%.0f MiB/s); broker's peak RSS %.1f MiB -> %.1f MiB (%+.2f MiB)",
		size, elapsed.Round(time.Millisecond), float64(size)/(1<<20)/elapsed.Seconds(),
		float64(before)/(1<<20), float64(after)/(1<<20), float64(growth)/(1<<20))
	if growth > bigMessageMaxGrowth {
		t.Fatalf("broker's peak RSS grew by %d bytes relaying %d, want at most %d", growth, size, bigMessageMaxGrowth)
	}
	got := env.waitMessages(t, 2)[1]
	if got.Size != size || got.SHA256 != sum {
		t.Fatalf("upstream got %d bytes with SHA-256 %x, want %d with %x", got.Size, got.SHA256, size, sum)
	}
	if got.Data != nil {
		t.Fatalf("simulator kept the message's bytes; KeepBytes should have stopped it")
	}
	if line := env.Daemon.waitLog("bytes=" + strconv.FormatInt(size, 10)); !strings.Contains(line, `msg="message relayed"`) {
		t.Fatalf("log line %q: want message relayed with bytes=%d", line, size)
	}
}

// BenchmarkSMTPRelay10MB relays 10 MiB messages (as BenchmarkFetch10MB
// fetches them; `make bench` runs 200 of them) through a non-race broker to
// the simulated Exchange, and reports throughput and how much broker's peak
// resident memory grew.
func BenchmarkSMTPRelay10MB(b *testing.B) {
	const size = 10 << 20
	env, c := bigMessageEnv(b, "")
	pid := env.Daemon.cmd.Process.Pid
	resetHWM(b, pid)
	before := vmHWM(b, pid)
	b.SetBytes(newBigMessage(size).Size())
	sent := 1
	for b.Loop() {
		sendBig(b, c, size)
		sent++
	}
	b.StopTimer()
	env.waitMessages(b, sent)
	b.ReportMetric(float64(vmHWM(b, pid)-before)/(1<<20), "MiB-peak-RSS-growth")
}
