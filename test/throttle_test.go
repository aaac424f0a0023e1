package test

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

const (
	// throttleWrong is how many wrong passwords the attacker sends.
	throttleWrong = 1000
	// throttleWorkers is the attacker's concurrent connections, below
	// the default cap per source (100).
	throttleWorkers = 75
	// throttleMaxChecked bounds the wrong passwords broker may actually
	// check (run argon2 for) during the attack: the login name's bucket
	// (10 failures), then one per leak period (30 s), plus slack for a
	// leak period boundary.
	throttleMaxChecked = 10 + 2 + 2
	// argonRunBytes is what one argon2 run allocates.
	argonRunBytes = 19 << 20
	// throttleRSSSlack is broker's resident growth besides argon2: the
	// attacker's sessions, their goroutines and buffers, the log.
	throttleRSSSlack = 16 << 20
	// throttleReturnSlack is how close to its baseline broker's resident
	// memory must come back after the attack.
	throttleReturnSlack = 6 << 20
)

// throttleBound is the stated bound on broker's resident growth under a
// flood of wrong passwords: argon2 runs on at most ⌈cores/2⌉ slots, each
// 19 MiB, returned to the OS after each run (broker/argonbound.go), plus
// throttleRSSSlack; 35 MiB on 2 cores. Measured on 2 cores: +20.6 MiB.
func throttleBound() int64 {
	slots := max(1, (runtime.GOMAXPROCS(0)+1)/2)
	return int64(slots*argonRunBytes + throttleRSSSlack)
}

// statusBytes returns a field of /proc/pid/status in bytes (VmRSS, VmHWM).
func statusBytes(t testing.TB, pid int, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Errorf("reading /proc/%d/status: %v", pid, err)
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Errorf("%s %q: %v", field, v, err)
			}
			return kb << 10
		}
	}
	t.Errorf("no %s in /proc/%d/status", field, pid)
	return 0
}

func mibOf(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// floodConn is a minimal IMAP client for logins.
type floodConn struct {
	conn net.Conn
	r    *bufio.Reader
	tag  int
}

// errTooManyConns is a connection refused at a connection cap.
var errTooManyConns = errors.New("refused: too many connections")

func dialFloodConn(addr string) (*floodConn, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := &floodConn{conn: conn, r: bufio.NewReader(conn)}
	line, err := c.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "* OK") {
		conn.Close()
		if strings.HasPrefix(line, "* BYE Too many connections") {
			return nil, errTooManyConns
		}
		return nil, fmt.Errorf("greeting %q: %v", line, err)
	}
	return c, nil
}

// login sends LOGIN and returns the tagged reply without its tag.
func (c *floodConn) login(user, password string) (string, error) {
	c.tag++
	tag := fmt.Sprintf("a%d", c.tag)
	if _, err := fmt.Fprintf(c.conn, "%s LOGIN %s %s\r\n", tag, user, password); err != nil {
		return "", err
	}
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if rest, ok := strings.CutPrefix(line, tag+" "); ok {
			return strings.TrimRight(rest, "\r\n"), nil
		}
	}
}

// wrongAppPassword returns an app password with the given ID and a random
// secret: well formed, and wrong.
func wrongAppPassword(id string) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	b := make([]byte, 32-len(id))
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[b[i]%32]
	}
	return id + string(b)
}

// newFloodEnv is newSimEnv with a broker built without the race
// detector, whose memory is measured.
func newFloodEnv(t *testing.T) *simEnv {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	env := &simEnv{Entra: entra, Secret: "Zx8Q~sim.secret-value_0123456789abcdefXYZ"}
	entra.AddTenant(tenant)
	entra.AddApp(m365sim.App{
		Tenant: tenant, ClientID: clientID, Secret: env.Secret,
		Roles: []string{"IMAP.AccessAsApp"}, Mailboxes: []string{mailbox},
	})
	if env.Upstream, err = m365sim.NewIMAP(entra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Upstream.Close() })
	if err := env.Upstream.AddMailbox(mailbox); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := writeFile(t, dir, "upstream-ca.pem", env.Upstream.CACertPEM())
	secret := writeFile(t, dir, "client.secret", []byte(env.Secret+"\n"))
	cfg := brokerConfig(dir+"/state", env.Upstream.Addr(), ca, entra.URL(), tenant, clientID, secret, mailbox)
	env.Daemon = startDaemonBin(t, plainBroker(t), dir, cfg)
	env.PassID, env.Password = env.Daemon.addAppPassword(mailbox)
	return env
}

// TestWrongPasswordFlood sends 1,000 wrong passwords for one mailbox from
// one source, over many connections at once, to a broker built without the
// race detector, while the right password logs in every 200 ms. Nearly
// every wrong password must be refused without a check, each with the
// reply of a wrong password and a log line; the right password must get in
// within a second every time; broker's resident memory must stay under
// throttleBound above its baseline and come back near it within a minute.
func TestWrongPasswordFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 30 s")
	}
	env := newFloodEnv(t)
	d := env.Daemon
	pid := d.cmd.Process.Pid
	rightLogin := func() (time.Duration, error) {
		start := time.Now()
		c, err := dialFloodConn(d.IMAPAddr)
		for errors.Is(err, errTooManyConns) && time.Since(start) < time.Second {
			// Refused in a wave of the attacker's redials (see below);
			// the time until a session counts against the bound.
			c, err = dialFloodConn(d.IMAPAddr)
		}
		if err != nil {
			return time.Since(start), err
		}
		defer c.conn.Close()
		reply, err := c.login(mailbox, env.Password)
		took := time.Since(start)
		if err != nil {
			return took, err
		}
		if !strings.HasPrefix(reply, "OK") {
			return took, fmt.Errorf("right password: %q", reply)
		}
		fmt.Fprintf(c.conn, "z LOGOUT\r\n")
		return took, nil
	}
	// Proven once: from now on it needs no argon2.
	if _, err := rightLogin(); err != nil {
		t.Fatalf("first login: %v\n%s", err, d.Log())
	}

	// The baseline: resident memory once broker has returned what issuing
	// and checking the password took.
	baseline := rssSettled(t, pid, 15*time.Second)
	resetHWM(t, pid)

	stop := make(chan struct{})
	var sampler sync.WaitGroup
	var peak atomic.Int64
	sampler.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss := statusBytes(t, pid, "VmRSS"); rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})

	// The right password, all along.
	type result struct {
		took time.Duration
		err  error
	}
	rights := make(chan result, 1000)
	sampler.Go(func() {
		pace := time.NewTicker(200 * time.Millisecond)
		defer pace.Stop()
		for {
			took, err := rightLogin()
			rights <- result{took, err}
			select {
			case <-stop:
				return
			case <-pace.C:
			}
		}
	})

	// The attacker.
	var sent atomic.Int32
	var wrongs sync.Map // the wrong passwords sent, to look for in the log
	errs := make(chan error, throttleWrong)
	start := time.Now()
	var attackers sync.WaitGroup
	for range throttleWorkers {
		attackers.Go(func() {
			var c *floodConn
			defer func() {
				if c != nil {
					c.conn.Close()
				}
			}()
			for sent.Add(1) <= throttleWrong {
				if c == nil || c.tag == 3 { // broker ends a session at 3 failures
					if c != nil {
						c.conn.Close()
					}
					var err error
					if c, err = dialFloodConn(d.IMAPAddr); err != nil {
						c = nil
						if errors.Is(err, errTooManyConns) {
							// A wave of sessions ending at their third
							// failure and redialled at once can find the
							// old ones still counted against the source:
							// the cap at work. No password was sent.
							sent.Add(-1)
							continue
						}
						errs <- err
						continue
					}
				}
				pw := wrongAppPassword(env.PassID)
				wrongs.Store(pw, true)
				reply, err := c.login(mailbox, pw)
				if err != nil {
					errs <- err
					c.conn.Close()
					c = nil
					continue
				}
				if reply != "NO [AUTHENTICATIONFAILED] Invalid credentials" {
					errs <- fmt.Errorf("wrong password answered %q", reply)
				}
			}
		})
	}
	attackers.Wait()
	elapsed := time.Since(start)
	close(stop)
	sampler.Wait()
	close(errs)
	close(rights)
	hwm := statusBytes(t, pid, "VmHWM")

	nerr := 0
	for err := range errs {
		if nerr++; nerr <= 5 {
			t.Errorf("attack: %v", err)
		}
	}
	var rightN int
	var slowest time.Duration
	for r := range rights {
		rightN++
		slowest = max(slowest, r.took)
		if r.err != nil {
			t.Errorf("right password during the attack: %v", r.err)
		} else if r.took > time.Second {
			t.Errorf("right password took %v during the attack, want at most 1s", r.took)
		}
	}

	// Every wrong password is logged once, as throttled unless checked;
	// no password appears in the log. The last lines may still be on
	// their way through the daemon's stderr pipe.
	d.waitLogCount(`msg="login failed"`, throttleWrong)
	log := d.Log()
	var failed, throttled int
	for line := range strings.SplitSeq(log, "\n") {
		if !strings.Contains(line, `msg="login failed"`) || !strings.Contains(line, "user="+mailbox) {
			continue
		}
		failed++
		if strings.Contains(line, "throttled") {
			throttled++
			if !strings.Contains(line, `login name \"`+mailbox+`\"`) || !strings.Contains(line, "source 127.0.0.1/32") {
				t.Errorf("throttled line without name and source: %s", line)
			}
		}
	}
	for _, tok := range regexp.MustCompile(`[a-z2-7]{32}`).FindAllString(log, -1) {
		if _, ok := wrongs.Load(tok); ok || tok == env.Password {
			t.Errorf("the log holds a password: %s", tok)
			break
		}
	}
	checked := throttleWrong - throttled

	// Memory comes back.
	returnStart := time.Now()
	back := rssAtMost(t, pid, baseline+throttleReturnSlack, time.Minute)
	returned := time.Since(returnStart)
	top := max(peak.Load(), hwm)

	t.Logf("%d wrong passwords over %d connections at once: answered in %v (%.0f/s), %d refused as throttled, %d checked",
		throttleWrong, throttleWorkers, elapsed.Round(time.Millisecond), throttleWrong/elapsed.Seconds(), throttled, checked)
	t.Logf("right password: %d logins during the attack, slowest %v", rightN, slowest.Round(time.Millisecond))
	t.Logf("broker RSS: baseline %s, peak %s (%+.1f MiB; bound %+.1f MiB), %s %v after the attack",
		mibOf(baseline), mibOf(top), float64(top-baseline)/(1<<20), float64(throttleBound())/(1<<20), mibOf(back), returned.Round(time.Millisecond))

	if failed < throttleWrong {
		t.Errorf("%d login failed lines for %d wrong passwords", failed, throttleWrong)
	}
	if checked > throttleMaxChecked {
		t.Errorf("%d wrong passwords were checked (ran argon2), want at most %d: the rest refused", checked, throttleMaxChecked)
	}
	if rightN < 10 {
		t.Errorf("only %d right logins during the attack", rightN)
	}
	if top-baseline > throttleBound() {
		t.Errorf("broker's RSS peaked at %s, %s above its baseline; want at most %s", mibOf(top), mibOf(top-baseline), mibOf(throttleBound()))
	}
	if back > baseline+throttleReturnSlack {
		t.Errorf("broker's RSS still %s a minute after the attack, baseline %s", mibOf(back), mibOf(baseline))
	}
}

// rssSettled polls process pid's resident memory until it has not fallen
// for two seconds, and returns it.
func rssSettled(t *testing.T, pid int, limit time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(limit)
	low := statusBytes(t, pid, "VmRSS")
	lowAt := time.Now()
	for time.Now().Before(deadline) && time.Since(lowAt) < 2*time.Second {
		time.Sleep(50 * time.Millisecond)
		if rss := statusBytes(t, pid, "VmRSS"); rss < low-(64<<10) {
			low, lowAt = rss, time.Now()
		}
	}
	return low
}

// rssAtMost polls process pid's resident memory until it is at most want or
// limit has passed, and returns the last reading.
func rssAtMost(t *testing.T, pid int, want int64, limit time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		rss := statusBytes(t, pid, "VmRSS")
		if rss <= want || time.Now().After(deadline) {
			return rss
		}
		time.Sleep(50 * time.Millisecond)
	}
}
