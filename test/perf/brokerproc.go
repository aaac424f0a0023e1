package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// brokerStartTimeout bounds the wait for broker's listeners.
	brokerStartTimeout = 30 * time.Second
	// brokerStopTimeout bounds a drain at the end of the run.
	brokerStopTimeout = 30 * time.Second
	// logTailLines is how much of broker's log an error message shows.
	logTailLines = 40
	// controlTimeout bounds one request on the control socket.
	controlTimeout = 60 * time.Second
)

var (
	listeningRE = regexp.MustCompile(`msg=listening proto=(imap|smtp) addr=(\S+)`)
	readyRE     = regexp.MustCompile(`msg=ready(\s|$)`)
)

// brokerProc is a running `broker serve`.
type brokerProc struct {
	name     string
	bin      string
	config   string
	stateDir string
	IMAPAddr string
	SMTPAddr string

	cmd    *exec.Cmd
	exited chan struct{}
	err    error // the exit status, once exited is closed

	mu   sync.Mutex
	tail []string // the last log lines
}

// startBroker writes config (whose state_dir is dir/state) and runs broker
// on it until the run ends.
func startBroker(r *runner, name, bin, dir, config string) (*brokerProc, error) {
	path := filepath.Join(dir, "broker.toml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	b := &brokerProc{name: name, bin: bin, config: path, stateDir: filepath.Join(dir, "state"), exited: make(chan struct{})}
	b.cmd = exec.Command(bin, "serve", "-config", path)
	stderr, err := b.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := b.cmd.Start(); err != nil {
		return nil, err
	}
	addrs := map[string]string{}
	ready := make(chan struct{})
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		started := false
		for sc.Scan() {
			line := sc.Text()
			b.mu.Lock()
			b.tail = append(b.tail, line)
			if len(b.tail) > 2*logTailLines {
				b.tail = append(b.tail[:0], b.tail[len(b.tail)-logTailLines:]...)
			}
			b.mu.Unlock()
			if started {
				continue
			}
			if m := listeningRE.FindStringSubmatch(line); m != nil && addrs[m[1]] == "" {
				addrs[m[1]] = m[2]
			} else if readyRE.MatchString(line) {
				started = true
				close(ready)
			}
		}
	}()
	go func() {
		<-scanned
		b.err = b.cmd.Wait()
		close(b.exited)
	}()
	r.Cleanup(func() {
		if err := b.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "perf: %v\n", err)
		}
	})
	select {
	case <-ready:
		b.IMAPAddr, b.SMTPAddr = addrs["imap"], addrs["smtp"]
		return b, nil
	case <-b.exited:
		return nil, fmt.Errorf("broker %s exited at start-up: %v\n%s", name, b.err, b.logTail())
	case <-time.After(brokerStartTimeout):
		return nil, fmt.Errorf("broker %s did not start within %v\n%s", name, brokerStartTimeout, b.logTail())
	}
}

// logTail is the end of broker's log, for error messages.
func (b *brokerProc) logTail() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.tail
	if len(t) > logTailLines {
		t = t[len(t)-logTailLines:]
	}
	return "--- broker " + b.name + " ---\n" + strings.Join(t, "\n")
}

// stop drains broker with SIGTERM, as systemd would.
func (b *brokerProc) stop() error {
	select {
	case <-b.exited:
		return nil
	default:
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
		if b.err != nil {
			return fmt.Errorf("broker %s exited with %v\n%s", b.name, b.err, b.logTail())
		}
		return nil
	case <-time.After(brokerStopTimeout):
		b.cmd.Process.Kill()
		<-b.exited
		return fmt.Errorf("broker %s did not stop within %v", b.name, brokerStopTimeout)
	}
}

// alive fails once broker has exited.
func (b *brokerProc) alive() error {
	select {
	case <-b.exited:
		return fmt.Errorf("broker %s exited: %v\n%s", b.name, b.err, b.logTail())
	default:
		return nil
	}
}

// addAppPassword issues an app password with the CLI, through the control
// socket, and returns it.
func (b *brokerProc) addAppPassword(mailbox string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, b.bin, "app-password", "add", mailbox, "-label", "perf", "-config", b.config).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		return "", fmt.Errorf("broker app-password add %s: %v", mailbox, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	password := strings.TrimSpace(lines[len(lines)-1])
	if len(password) < 16 || strings.ContainsAny(password, " \t") {
		return "", fmt.Errorf("broker app-password add %s printed %q; want the password last", mailbox, out)
	}
	return password, nil
}

// daemonStats is the answer of the control socket's stats op: live memory
// after a collection.
type daemonStats struct {
	Sessions     int    `json:"sessions"`
	IMAPSessions int    `json:"imap_sessions"`
	Goroutines   int    `json:"goroutines"`
	HeapBytes    uint64 `json:"heap_bytes"`
	StackBytes   uint64 `json:"stack_bytes"`
}

func (b *brokerProc) stats() (daemonStats, error) {
	var resp struct {
		Error string       `json:"error"`
		Stats *daemonStats `json:"stats"`
	}
	conn, err := net.DialTimeout("unix", filepath.Join(b.stateDir, "control.sock"), controlTimeout)
	if err != nil {
		return daemonStats{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(controlTimeout))
	if err := json.NewEncoder(conn).Encode(map[string]string{"op": "stats"}); err != nil {
		return daemonStats{}, err
	}
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return daemonStats{}, fmt.Errorf("stats: %v", err)
	}
	if resp.Error != "" || resp.Stats == nil {
		return daemonStats{}, fmt.Errorf("stats: %q", resp.Error)
	}
	return *resp.Stats, nil
}

// memory reads the resident set size and its peak (VmRSS, VmHWM) in bytes.
func (b *brokerProc) memory() (rss, peak uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	rss, err1 := statusKiB(data, "VmRSS:")
	peak, err2 := statusKiB(data, "VmHWM:")
	return rss, peak, errors.Join(err1, err2)
}

// userHZ is the unit of /proc/PID/stat's CPU times on Linux.
const userHZ = 100

// cpu is the CPU time broker has used so far, user and system.
func (b *brokerProc) cpu() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", b.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces; utime and stime
	// are the 12th and 13th fields after it.
	i := strings.LastIndex(string(data), ") ")
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", b.cmd.Process.Pid)
	}
	f := strings.Fields(string(data[i+2:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", b.cmd.Process.Pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// resetPeak makes VmHWM start again from the current RSS (Linux ≥ 4.0).
func (b *brokerProc) resetPeak() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", b.cmd.Process.Pid), []byte("5"), 0)
}

// statusKiB reads a "Key:   123 kB" line of /proc/PID/status, in bytes.
func statusKiB(status []byte, key string) (uint64, error) {
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc status", key)
}
