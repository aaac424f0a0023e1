package main

import (
	"fmt"
	"sync"
	"time"
)

const (
	smtpSmallCount = 50
	smtpSmallSize  = 100 << 10
	smtpLargeSize  = 20 << 20
	rssSize        = 100 << 20
	// rssTarget is the most broker's resident memory may grow while it
	// relays one rssSize message.
	rssTarget = 8 << 20
	// rssSample is how often the resident set is sampled besides VmHWM.
	rssSample   = 5 * time.Millisecond
	wanSMTPSize = 10 << 10
	mib         = 1 << 20
)

func messageID(c, path string, i int) string {
	return fmt.Sprintf("perf-%s-%s-%d-%s@%s", c, path, i, newGUID()[:8], mailDomain)
}

// eachRound is eachRound recording, in r's raw figures, the CPU time b
// spent in each of its path's runs.
func (e *env) eachRound(r *row, rounds int, b *brokerProc, run func(path string) error) error {
	var cpu []float64
	defer func() {
		if r.Raw == nil {
			r.Raw = map[string]any{}
		}
		r.Raw["broker_cpu_s"] = cpu
	}()
	return eachRound(rounds, func(path string) error {
		if path != "broker" {
			return run(path)
		}
		before, cpuErr := b.cpu()
		err := run(path)
		if after, err2 := b.cpu(); cpuErr == nil && err2 == nil {
			cpu = append(cpu, (after - before).Seconds())
		}
		return err
	})
}

// smtpOpener logs in on a path: through b, or straight to directAddr.
func (e *env) smtpOpener(b *brokerProc, directAddr string) func(path string) (*smtpConn, error) {
	return func(path string) (*smtpConn, error) {
		if path == "direct" {
			return e.directSMTP(directAddr, sendBox)
		}
		return e.brokerSMTP(b, sendBox)
	}
}

// caseSMTPSmall: many messages of 100 KiB over one session, the whole
// session timed (connect to QUIT's reply).
func (e *env) caseSMTPSmall() *row {
	r := &row{Case: "smtp-100k", What: fmt.Sprintf("%d × 100 KiB, one session", smtpSmallCount), Unit: "msgs/s",
		Target: target{Kind: atLeastRatio, Value: 0.9}}
	open := e.smtpOpener(e.loop, e.postfix.SubmissionAddr)
	var s series
	err := e.eachRound(r, e.o.rounds, e.loop, func(path string) error {
		msgs := make([]*message, smtpSmallCount)
		for i := range msgs {
			msgs[i] = newMessage(messageID(r.Case, path, i), sendBox, sinkBox, smtpSmallSize)
		}
		start := time.Now()
		c, err := open(path)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, m := range msgs {
			if _, err := c.send(sendBox, sinkBox, m.wire); err != nil {
				return err
			}
			e.verify.sent(r.Case+" "+path, m)
		}
		if err := c.quit(); err != nil {
			return err
		}
		s.add(path, float64(len(msgs))/time.Since(start).Seconds())
		return e.verify.settle()
	})
	r.fill(s)
	return r.done(err)
}

// caseSMTPLarge: one 20 MiB message, MAIL FROM to DATA's 250 timed.
func (e *env) caseSMTPLarge() *row {
	r := &row{Case: "smtp-20m", What: "one 20 MiB message", Unit: "MiB/s",
		Target: target{Kind: atLeastRatio, Value: 0.9}}
	open := e.smtpOpener(e.loop, e.postfix.SubmissionAddr)
	var s series
	err := e.eachRound(r, e.o.rounds, e.loop, func(path string) error {
		m := newMessage(messageID(r.Case, path, 0), sendBox, sinkBox, smtpLargeSize)
		c, err := open(path)
		if err != nil {
			return err
		}
		defer c.Close()
		start := time.Now()
		if _, err := c.send(sendBox, sinkBox, m.wire); err != nil {
			return err
		}
		s.add(path, float64(len(m.raw))/mib/time.Since(start).Seconds())
		e.verify.sent(r.Case+" "+path, m)
		if err := c.quit(); err != nil {
			return err
		}
		return e.verify.settle()
	})
	r.fill(s)
	return r.done(err)
}

// caseSMTPRSS: how much broker's resident memory grows while it relays
// one 100 MiB message, after a small message has warmed the path. The
// peak is VmHWM, reset before the message (clear_refs), and VmRSS sampled
// meanwhile in case the reset is not supported.
func (e *env) caseSMTPRSS() *row {
	r := &row{Case: "smtp-rss", What: "peak RSS growth, one 100 MiB message", Unit: "MiB",
		Target: target{Kind: below, Value: rssTarget / mib, Unit: "MiB"}}
	err := func() error {
		warm := newMessage(messageID(r.Case, "warm", 0), sendBox, sinkBox, wanSMTPSize)
		c, err := e.brokerSMTP(e.loop, sendBox)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.send(sendBox, sinkBox, warm.wire); err != nil {
			return err
		}
		e.verify.sent(r.Case+" warm-up", warm)
		if err := e.verify.settle(); err != nil {
			return err
		}
		m := newMessage(messageID(r.Case, "broker", 0), sendBox, sinkBox, rssSize)
		before, _, err := e.loop.memory()
		if err != nil {
			return err
		}
		resetErr := e.loop.resetPeak()
		var sampled uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			tick := time.NewTicker(rssSample)
			defer tick.Stop()
			for {
				if rss, _, err := e.loop.memory(); err == nil {
					sampled = max(sampled, rss)
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		})
		start := time.Now()
		_, err = c.send(sendBox, sinkBox, m.wire)
		elapsed := time.Since(start)
		close(stop)
		wg.Wait()
		if err != nil {
			return err
		}
		e.verify.sent(r.Case, m)
		_, peak, err := e.loop.memory()
		if err != nil {
			return err
		}
		if resetErr != nil {
			peak = 0 // VmHWM still holds the peak of earlier work
			r.Note = "VmHWM could not be reset (" + resetErr.Error() + "): sampled VmRSS only"
		}
		high := max(peak, sampled)
		growth := float64(0)
		if high > before {
			growth = float64(high-before) / mib
		}
		r.Broker = ptr(growth)
		r.Raw = map[string]any{
			"rss_before_bytes": before, "vmhwm_bytes": peak, "sampled_rss_max_bytes": sampled,
			"message_bytes": len(m.raw), "seconds": elapsed.Seconds(),
			"mib_per_s": float64(len(m.raw)) / mib / elapsed.Seconds(),
		}
		if err := c.quit(); err != nil {
			return err
		}
		return e.verify.settle()
	}()
	return r.done(err)
}

// caseWANSMTP: one message per connection, as legacy senders do, with the
// upstream 30 ms away: connect to QUIT's reply, in sequence.
func (e *env) caseWANSMTP() *row {
	r := &row{Case: "wan-smtp", What: "10 KiB, one message per connection, +30 ms RTT", Unit: "msgs/s",
		Target: target{Kind: atLeastRatio, Value: 1.5}}
	open := e.smtpOpener(e.wan, e.smtpWAN.Addr())
	var s series
	err := e.eachRound(r, e.o.rounds, e.wan, func(path string) error {
		msgs := make([]*message, e.o.wanCount)
		for i := range msgs {
			msgs[i] = newMessage(messageID(r.Case, path, i), sendBox, sinkBox, wanSMTPSize)
		}
		start := time.Now()
		for _, m := range msgs {
			c, err := open(path)
			if err != nil {
				return err
			}
			_, err = c.send(sendBox, sinkBox, m.wire)
			if err == nil {
				e.verify.sent(r.Case+" "+path, m)
				err = c.quit()
			}
			c.Close()
			if err != nil {
				return err
			}
		}
		s.add(path, float64(len(msgs))/time.Since(start).Seconds())
		return e.verify.settle()
	})
	r.fill(s)
	return r.done(err)
}
