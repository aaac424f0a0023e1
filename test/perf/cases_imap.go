package main

import (
	"crypto/sha256"
	"fmt"
	"sync"
	"time"
)

// fetchSize is the message the FETCH cases read.
const fetchSize = 10 << 20

// imapOpener logs in on a path: through b, or straight to directAddr.
func (e *env) imapOpener(b *brokerProc, directAddr string) func(path, mailbox string) (*imapConn, error) {
	return func(path, mailbox string) (*imapConn, error) {
		if path == "direct" {
			return e.directIMAP(directAddr, mailbox)
		}
		return e.brokerIMAP(b, mailbox)
	}
}

// caseFetch: a logged-in session with INBOX selected fetches the 10 MiB
// message e.o.fetches times in a row, each checked against what was
// stored.
func (e *env) caseFetch(name, what string, b *brokerProc, directAddr string, want float64) *row {
	r := &row{Case: name, What: what, Unit: "MiB/s", Target: target{Kind: atLeastRatio, Value: want}}
	open := e.imapOpener(b, directAddr)
	mismatches := len(e.verify.Mismatches)
	var s series
	err := e.eachRound(r, e.o.rounds, b, func(path string) error {
		c, err := open(path, fetchBox)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, _, err := selectInbox(c); err != nil {
			return err
		}
		// One fetch first, untimed: the first read of the message is
		// colder on whichever path comes first.
		var total int64
		start := time.Now()
		for i := range e.o.fetches + 1 {
			if i == 1 {
				total, start = 0, time.Now()
			}
			h := sha256.New()
			n, err := c.fetchUID(e.fetchUID, h)
			if err != nil {
				return err
			}
			var sum [sha256.Size]byte
			copy(sum[:], h.Sum(nil))
			e.verify.fetched(name+" "+path, n, sum, e.fetchMsg)
			total += n
		}
		s.add(path, float64(total)/mib/time.Since(start).Seconds())
		return c.logout()
	})
	r.fill(s)
	if err == nil && len(e.verify.Mismatches) > mismatches {
		err = fmt.Errorf("fetched bytes differ from the stored message")
	}
	return r.done(err)
}

// loginLoop is one path's half of the login case: loginClients clients,
// each on its own mailbox, looping connect, login, SELECT INBOX, LOGOUT
// until d has passed.
func (e *env) loginLoop(path string, d time.Duration) (logins int, failures int, firstErr error) {
	open := e.imapOpener(e.loop, e.dovecot.IMAPAddr)
	var mu sync.Mutex
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for i := range loginClients {
		wg.Go(func() {
			ok, failed := 0, 0
			var first error
			for time.Now().Before(deadline) {
				err := func() error {
					c, err := open(path, loginBox(i))
					if err != nil {
						return err
					}
					defer c.Close()
					if _, _, err := selectInbox(c); err != nil {
						return err
					}
					return c.logout()
				}()
				if err != nil {
					failed++
					if first == nil {
						first = err
					}
					continue
				}
				ok++
			}
			mu.Lock()
			logins += ok
			failures += failed
			if firstErr == nil {
				firstErr = first
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return logins, failures, firstErr
}

// caseLogins: logins per second of loginClients concurrent clients, each
// path looping for e.o.duration in all, in halves alternating the order.
func (e *env) caseLogins() *row {
	r := &row{Case: "logins", What: fmt.Sprintf("%d clients: connect, LOGIN, SELECT, LOGOUT", loginClients), Unit: "logins/s",
		Target: target{Kind: atLeastRatio, Value: 0.9}}
	const halves = 2
	var s series
	failures := map[string]int{}
	var firstErr error
	err := e.eachRound(r, halves, e.loop, func(path string) error {
		start := time.Now()
		n, failed, err := e.loginLoop(path, e.o.duration/halves)
		s.add(path, float64(n)/time.Since(start).Seconds())
		failures[path] += failed
		if firstErr == nil && err != nil {
			firstErr = fmt.Errorf("%s path: %v", path, err)
		}
		return nil
	})
	r.fill(s)
	r.Raw["failures"] = failures
	if failures["broker"]+failures["direct"] > 0 {
		r.Note = fmt.Sprintf("failed logins: %d through broker, %d direct; first: %v", failures["broker"], failures["direct"], firstErr)
	}
	return r.done(err)
}

// caseWANLogin: the time from connect to LOGIN's OK (direct: to
// AUTHENTICATE's OK) with the upstream 30 ms away, in sequence; the
// median of e.o.wanCount logins per path and round.
func (e *env) caseWANLogin() *row {
	r := &row{Case: "wan-login", What: "IMAP login p50, +30 ms RTT", Unit: "ms",
		Target: target{Kind: atMostRatio, Value: 0.8}}
	open := e.imapOpener(e.wan, e.imapWAN.Addr())
	samples := map[string][]float64{}
	err := e.eachRound(r, e.o.rounds, e.wan, func(path string) error {
		for range e.o.wanCount {
			start := time.Now()
			c, err := open(path, fetchBox)
			if err != nil {
				return err
			}
			samples[path] = append(samples[path], float64(time.Since(start).Microseconds())/1000)
			err = c.logout()
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if len(samples["broker"]) > 0 {
		r.Broker = ptr(median(samples["broker"]))
	}
	if len(samples["direct"]) > 0 {
		r.Direct = ptr(median(samples["direct"]))
	}
	r.Raw["samples_ms"] = samples
	r.Raw["p90_ms"] = map[string]float64{
		"broker": percentile(samples["broker"], 0.9), "direct": percentile(samples["direct"], 0.9),
	}
	return r.done(err)
}
