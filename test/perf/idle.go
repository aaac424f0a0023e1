package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

const (
	// idlePerMailbox is the most max_connections_per_mailbox allows: the
	// sessions are spread over as many mailboxes as that needs.
	idlePerMailbox = 100
	// idleParallel is how many sessions the client opens at once.
	idleParallel = 32
	// idleMemTarget is the most broker may hold per idle session.
	idleMemTarget = 32 << 10
	// fdReserve is what broker needs besides two descriptors per session
	// (the client's and upstream's): listeners, store, logs.
	fdReserve = 256
	// idleTimeout bounds opening, and then checking, every session.
	idleTimeout = 15 * time.Minute
	// settleTimeout bounds the wait for the warm-up sessions to end.
	settleTimeout = 30 * time.Second
	// maxErrors bounds the errors the client reports.
	maxErrors = 5
)

// The idle sessions' client runs in a child process (perf -idle-client):
// this process holds the simulated upstream's end of every session, and
// a process may not have both ends of 10,000 sessions open within the
// usual descriptor limit.

type idleSpec struct {
	Addr     string      `json:"addr"`
	Logins   []idleLogin `json:"logins"`
	Sessions int         `json:"sessions"`
}

type idleLogin struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// idleReport is what the client says after opening, and after checking,
// the sessions.
type idleReport struct {
	OK      int      `json:"ok"`
	Failed  int      `json:"failed"`
	Errors  []string `json:"errors,omitempty"`
	Seconds float64  `json:"seconds"`
}

// runIdleClient is the child: it reads an idleSpec line, opens the
// sessions (LOGIN, SELECT INBOX) and reports; at a "check" line it sends
// NOOP on each, reports, and logs out.
func runIdleClient(in io.Reader, out io.Writer) error {
	br := bufio.NewReader(in)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return err
	}
	var spec idleSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		return err
	}
	if len(spec.Logins) == 0 {
		return errors.New("no logins")
	}
	conns := make([]*imapConn, spec.Sessions)
	rep := forEach(spec.Sessions, func(i int) error {
		l := spec.Logins[i%len(spec.Logins)]
		c, err := dialIMAP(spec.Addr, nil)
		if err != nil {
			return err
		}
		if err := c.login(l.User, l.Password); err != nil {
			c.Close()
			return err
		}
		if _, _, err := selectInbox(c); err != nil {
			c.Close()
			return err
		}
		c.c.SetDeadline(time.Time{}) // idle from now on
		conns[i] = c
		return nil
	})
	if err := json.NewEncoder(out).Encode(rep); err != nil {
		return err
	}
	if _, err := br.ReadBytes('\n'); err != nil {
		return nil // the parent is gone: nothing to check
	}
	rep = forEach(spec.Sessions, func(i int) error {
		c := conns[i]
		if c == nil {
			return nil
		}
		_, err := c.command("NOOP", nil)
		return err
	})
	rep.OK -= countNil(conns)
	if err := json.NewEncoder(out).Encode(rep); err != nil {
		return err
	}
	forEach(spec.Sessions, func(i int) error {
		if conns[i] != nil {
			conns[i].logout()
		}
		return nil
	})
	return nil
}

func countNil(conns []*imapConn) int {
	n := 0
	for _, c := range conns {
		if c == nil {
			n++
		}
	}
	return n
}

// forEach runs f for 0..n-1, idleParallel at a time, and counts.
func forEach(n int, f func(i int) error) idleReport {
	start := time.Now()
	var rep idleReport
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	for range idleParallel {
		wg.Go(func() {
			for i := range next {
				err := f(i)
				mu.Lock()
				if err != nil {
					rep.Failed++
					if len(rep.Errors) < maxErrors {
						rep.Errors = append(rep.Errors, fmt.Sprintf("session %d: %v", i, err))
					}
				} else {
					rep.OK++
				}
				mu.Unlock()
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	rep.Seconds = time.Since(start).Seconds()
	return rep
}

// idleSessions raises RLIMIT_NOFILE, which broker and the client inherit,
// for want sessions where the system allows it, and returns how many
// sessions the limit lets broker hold, at most want.
func idleSessions(want int) (n int, limit uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return want, 0
	}
	if need := uint64(2*want + fdReserve); rl.Max < need || rl.Cur < need {
		raised := syscall.Rlimit{Cur: max(need, rl.Cur), Max: max(need, rl.Max)}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			rl = raised
		}
	}
	room := int(rl.Max) - fdReserve
	return max(min(want, room/2), 0), rl.Max
}

// caseIdle opens many sessions through broker and leaves them idle: none
// may fail, and broker's live heap and stacks (the control socket's
// stats, after a collection) may grow by at most idleMemTarget each.
// Dovecot runs one process per session, so the upstream is m365sim's
// IMAP service.
func (e *env) caseIdle() []*row {
	n, limit := idleSessions(e.o.idleSessions)
	fails := &row{Case: "idle", What: fmt.Sprintf("%d idle sessions: failures", n), Unit: "sessions",
		Target: target{Kind: equal, Value: 0, Unit: "failed"}}
	mem := &row{Case: "idle-mem", What: "broker heap+stacks per idle session", Unit: "KiB",
		Target: target{Kind: atMost, Value: idleMemTarget >> 10, Unit: "KiB"}}
	rss := &row{Case: "idle-rss", What: "broker RSS growth per idle session", Unit: "KiB",
		Target: target{Kind: atMost, Value: idleMemTarget >> 10, Unit: "KiB"}}
	note := "upstream: m365sim's IMAP (Dovecot runs a process per session)"
	if n < e.o.idleSessions {
		note += fmt.Sprintf("; %d sessions, not %d: RLIMIT_NOFILE %d leaves broker room for no more (2 descriptors each)", n, e.o.idleSessions, limit)
	}
	fails.Note = note
	err := e.runIdle(n, fails, mem, rss)
	if err != nil {
		mem.Error, rss.Error = "see idle", "see idle"
	}
	return []*row{fails.done(err), mem.done(nil), rss.done(nil)}
}

func (e *env) runIdle(n int, fails, mem, rssRow *row) error {
	if n <= 0 {
		return errors.New("no descriptors left for idle sessions")
	}
	sim, err := m365sim.NewIMAP(e.entra)
	if err != nil {
		return err
	}
	defer sim.Close()
	boxes := make([]string, (n+idlePerMailbox-1)/idlePerMailbox)
	for i := range boxes {
		boxes[i] = address(fmt.Sprintf("idle%03d", i))
		if err := sim.AddMailbox(boxes[i]); err != nil {
			return err
		}
	}
	ca := filepath.Join(e.r.dir, "sim-ca.pem")
	if err := os.WriteFile(ca, sim.CACertPEM(), 0o600); err != nil {
		return err
	}
	b, err := e.startBroker(brokerSpec{
		name: "idle", imapUp: sim.Addr(), imapCA: ca, mailboxes: boxes,
		limits:   fmt.Sprintf("max_connections = %d\nmax_connections_per_source = %d", n+fdReserve, n+fdReserve),
		imapKeys: fmt.Sprintf("max_connections_per_mailbox = %d", idlePerMailbox),
	})
	if err != nil {
		return err
	}
	defer b.stop()
	// Each account's token and app password once, so that what is
	// measured is the sessions, not the accounts.
	spec := idleSpec{Addr: b.IMAPAddr, Sessions: n}
	for _, mb := range boxes {
		c, err := e.brokerIMAP(b, mb)
		if err != nil {
			return fmt.Errorf("warm-up: %v", err)
		}
		if err := c.logout(); err != nil {
			return fmt.Errorf("warm-up: %v", err)
		}
		spec.Logins = append(spec.Logins, idleLogin{User: mb, Password: e.password(b, mb)})
	}
	before, err := settledStats(b)
	if err != nil {
		return err
	}
	rssBefore, _, err := b.memory()
	if err != nil {
		return err
	}

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "-idle-client")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(idleTimeout):
			cmd.Process.Kill()
			<-done
		}
	}()
	reports := make(chan idleReport, 2)
	readErr := make(chan error, 1)
	go func() {
		dec := json.NewDecoder(stdout)
		for {
			var rep idleReport
			if err := dec.Decode(&rep); err != nil {
				readErr <- fmt.Errorf("idle client: %v", err)
				return
			}
			reports <- rep
		}
	}()
	next := func() (idleReport, error) {
		select {
		case rep := <-reports:
			return rep, nil
		case err := <-readErr:
			return idleReport{}, err
		case <-time.After(idleTimeout):
			return idleReport{}, fmt.Errorf("idle client silent for %v", idleTimeout)
		}
	}
	if err := json.NewEncoder(stdin).Encode(spec); err != nil {
		return err
	}
	opened, err := next()
	if err != nil {
		return err
	}
	after, err := b.stats()
	if err != nil {
		return err
	}
	rssAfter, _, err := b.memory()
	if err != nil {
		return err
	}
	upstream := sim.Sessions()
	if _, err := io.WriteString(stdin, "check\n"); err != nil {
		return err
	}
	checked, err := next()
	if err != nil {
		return err
	}

	held := after.IMAPSessions - before.IMAPSessions
	failed := opened.Failed + checked.Failed + max(opened.OK-held, 0)
	fails.Broker = ptr(float64(failed))
	fails.Raw = map[string]any{
		"sessions": n, "opened": opened, "checked": checked, "broker_sessions": held,
		"upstream_sessions": upstream,
	}
	if len(opened.Errors)+len(checked.Errors) > 0 {
		fails.Note += fmt.Sprintf("; errors: %v %v", opened.Errors, checked.Errors)
	}
	if held > 0 {
		grown := float64(after.HeapBytes+after.StackBytes) - float64(before.HeapBytes+before.StackBytes)
		rss := float64(rssAfter) - float64(rssBefore)
		mem.Broker = ptr(grown / float64(held) / 1024)
		mem.Note = fmt.Sprintf("live heap and goroutine stacks (control socket's stats, after a GC) over %d sessions", held)
		rssRow.Broker = ptr(rss / float64(held) / 1024)
		rssRow.Note = "VmRSS of /proc/PID/status: the heap's garbage between collections included"
		rssRow.Raw = map[string]any{"rss_before_bytes": rssBefore, "rss_after_bytes": rssAfter}
		mem.Raw = map[string]any{
			"before": before, "after": after,
			"goroutines_per_session":     float64(after.Goroutines-before.Goroutines) / float64(held),
			"open_seconds":               opened.Seconds,
			"sessions_per_second_opened": float64(opened.OK) / opened.Seconds,
		}
	}
	return nil
}

// settledStats waits until the warm-up sessions have ended.
func settledStats(b *brokerProc) (daemonStats, error) {
	deadline := time.Now().Add(settleTimeout)
	for {
		st, err := b.stats()
		if err != nil || st.Sessions == 0 {
			return st, err
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("broker still holds %d sessions %v after the warm-up", st.Sessions, settleTimeout)
		}
		time.Sleep(deliveryPoll) // polling broker, which has no notification
	}
}
