// Command perf measures broker against the same client talking straight
// to the same upstream with XOAUTH2, both paths in one run, alternating,
// so that the machine's noise falls on both. It builds broker (or takes
// -broker), runs it as its own process against a real Dovecot and Postfix
// (test/harness) with tokens from the simulated identity platform
// (test/m365sim), on loopback and behind a forwarder adding 30 ms of round
// trip (test/netem). It prints a table and, with -json, writes the raw
// figures with a description of the machine. Missed targets are results,
// not failures: it exits non-zero only when something did not work (a
// case's error, or a byte that arrived different from what was sent).
//
// Run from the module's directory, as root (Dovecot and Postfix drop
// privileges): go run ./test/perf -quick. docs/performance.md describes
// the cases.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the flags, with the -quick defaults applied.
type options struct {
	quick        bool
	duration     time.Duration // of the login loop, per path
	only         map[string]bool
	jsonPath     string
	brokerBin    string
	idleSessions int
	rounds       int // of each throughput case, per path
	fetches      int // 10 MiB FETCHes per round
	wanCount     int // logins, messages per path and round at +30 ms
	verbose      bool
}

// caseNames are the cases in the order they run; -only selects some.
var caseNames = []string{
	"smtp-rss", // first: broker's memory has not grown on other work yet
	"smtp-100k",
	"smtp-20m",
	"imap-fetch",
	"logins",
	"imap-fetch-wan",
	"wan-login",
	"wan-smtp",
	"idle",
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-idle-client" {
		if err := runIdleClient(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "perf idle client:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(run())
}

func parseFlags() (options, error) {
	var o options
	var only string
	flag.BoolVar(&o.quick, "quick", false, "a short smoke run: one round per case, 5 s login loops, 1,000 idle sessions")
	flag.DurationVar(&o.duration, "duration", 60*time.Second, "how long each path loops logins (-quick: 5s)")
	flag.StringVar(&only, "only", "", "comma-separated cases to run: "+strings.Join(caseNames, ","))
	flag.StringVar(&o.jsonPath, "json", "", "write the figures and the machine's description to this file")
	flag.StringVar(&o.brokerBin, "broker", "", "broker binary to measure (default: build ./cmd/broker)")
	flag.IntVar(&o.idleSessions, "idle-sessions", 10000, "idle sessions to open (-quick: 1000); fewer if RLIMIT_NOFILE allows fewer")
	flag.BoolVar(&o.verbose, "v", false, "log the harness's messages")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// Five rounds: the median of five shrugs off two disturbed ones; 30
	// logins and messages per path at +30 ms.
	o.rounds, o.fetches, o.wanCount = 5, 5, 6
	if o.quick {
		o.rounds, o.fetches, o.wanCount = 1, 2, 10
		if !set["duration"] {
			o.duration = 5 * time.Second
		}
		if !set["idle-sessions"] {
			o.idleSessions = 1000
		}
	}
	if o.duration <= 0 || o.idleSessions <= 0 {
		return o, fmt.Errorf("-duration and -idle-sessions must be positive")
	}
	if only != "" {
		o.only = map[string]bool{}
		for c := range strings.SplitSeq(only, ",") {
			c = strings.TrimSpace(c)
			if !slices.Contains(caseNames, c) {
				return o, fmt.Errorf("-only: unknown case %q; cases: %s", c, strings.Join(caseNames, ","))
			}
			o.only[c] = true
		}
	}
	return o, nil
}

func (o options) runs(c string) bool { return o.only == nil || o.only[c] }

func (o options) runsAny(cs ...string) bool { return slices.ContainsFunc(cs, o.runs) }

func run() int {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "perf: must run as root: Dovecot and Postfix drop privileges to their own users")
		return 2
	}
	r, err := newRunner(o.verbose)
	if err != nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		return 1
	}
	defer r.close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "perf: interrupted; stopping broker, Dovecot and Postfix")
		r.close()
		os.Exit(130)
	}()
	code := 1
	func() {
		defer func() {
			if p := recover(); p != nil {
				se, ok := p.(setupError)
				if !ok {
					panic(p)
				}
				fmt.Fprintln(os.Stderr, "perf: setting up:", se.msg)
			}
		}()
		e := &env{r: r, o: o}
		code = e.run()
	}()
	return code
}

// run sets up what the selected cases need, runs them and reports.
func (e *env) run() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "perf: setting up:", err)
		return 1
	}
	var err error
	if e.root, err = moduleRoot(); err != nil {
		return fail(err)
	}
	m := machineInfo(e.root)
	m.Parameters = fmt.Sprintf("quick=%v rounds=%d duration=%v fetches=%d wan_count=%d idle_sessions=%d",
		e.o.quick, e.o.rounds, e.o.duration, e.o.fetches, e.o.wanCount, e.o.idleSessions)
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		m.NoFile = rl.Max
	}
	e.bin = e.o.brokerBin
	if e.bin == "" {
		e.r.progress("building broker")
		if e.bin, err = buildBroker(e.r, e.root); err != nil {
			return fail(err)
		}
	}
	m.Broker = firstLine(exec.Command(e.bin, "version").Output())
	if err := e.startEntra(); err != nil {
		return fail(err)
	}
	smtpCases := []string{"smtp-rss", "smtp-100k", "smtp-20m", "wan-smtp"}
	wanCases := []string{"imap-fetch-wan", "wan-login", "wan-smtp"}
	if e.o.runsAny(slices.DeleteFunc(slices.Clone(caseNames), func(c string) bool { return c == "idle" })...) {
		e.r.progress("starting Dovecot")
		e.startDovecot()
		if e.o.runsAny(smtpCases...) {
			e.r.progress("starting Postfix")
			e.startPostfix()
		}
		if err := e.startVerifier(); err != nil {
			return fail(err)
		}
		if e.o.runsAny(wanCases...) {
			if err := e.startForwarders(); err != nil {
				return fail(err)
			}
		}
		if err := e.startBrokers(); err != nil {
			return fail(err)
		}
		if e.o.runsAny("imap-fetch", "imap-fetch-wan") {
			if err := e.storeFetchMessage(); err != nil {
				return fail(fmt.Errorf("storing the message to fetch: %v", err))
			}
		}
	}
	started := time.Now()

	var rows []*row
	for _, c := range caseNames {
		if !e.o.runs(c) {
			continue
		}
		e.r.progress("case %s", c)
		caseStart := time.Now()
		switch c {
		case "smtp-rss":
			rows = append(rows, e.caseSMTPRSS())
		case "smtp-100k":
			rows = append(rows, e.caseSMTPSmall())
		case "smtp-20m":
			rows = append(rows, e.caseSMTPLarge())
		case "imap-fetch":
			rows = append(rows, e.caseFetch(c, "FETCH 10 MiB, loopback", e.loop, e.dovecot.IMAPAddr, 0.95))
		case "logins":
			rows = append(rows, e.caseLogins())
		case "imap-fetch-wan":
			rows = append(rows, e.caseFetch(c, "FETCH 10 MiB, +30 ms RTT, 1 Gbit/s", e.wan, e.imapWAN.Addr(), 1.0))
		case "wan-login":
			rows = append(rows, e.caseWANLogin())
		case "wan-smtp":
			rows = append(rows, e.caseWANSMTP())
		case "idle":
			rows = append(rows, e.caseIdle()...)
		}
		e.r.progress("case %s: %.1fs", c, time.Since(caseStart).Seconds())
		for _, b := range []*brokerProc{e.loop, e.wan} {
			if b == nil {
				continue
			}
			if err := b.alive(); err != nil {
				rows[len(rows)-1].Error = err.Error()
				return e.report(m, rows)
			}
		}
	}
	rows = append(rows, e.tokenRow(time.Since(started)))
	if e.verify != nil {
		rows = append(rows, e.bytesRow())
	}
	return e.report(m, rows)
}

// startBrokers starts the brokers the selected cases use, each with the
// accounts they log in to: one with its upstreams on loopback, one with
// them behind the forwarders.
func (e *env) startBrokers() error {
	var loop, wan []string
	if e.o.runs("imap-fetch") {
		loop = append(loop, fetchBox)
	}
	if e.o.runsAny("smtp-rss", "smtp-100k", "smtp-20m") {
		loop = append(loop, sendBox)
	}
	if e.o.runs("logins") {
		for i := range loginClients {
			loop = append(loop, loginBox(i))
		}
	}
	if e.o.runsAny("imap-fetch-wan", "wan-login") {
		wan = append(wan, fetchBox)
	}
	if e.o.runs("wan-smtp") {
		wan = append(wan, sendBox)
	}
	var err error
	if len(loop) > 0 {
		e.r.progress("starting broker (upstreams on loopback)")
		s := brokerSpec{name: "loopback", imapUp: e.dovecot.IMAPAddr, imapCA: e.dovecot.CAFile, mailboxes: loop}
		if e.postfix != nil {
			s.smtpUp, s.smtpCA = e.postfix.SubmissionAddr, e.postfix.CAFile
		}
		if e.loop, err = e.startBroker(s); err != nil {
			return err
		}
	}
	if len(wan) > 0 {
		e.r.progress("starting broker (upstreams at +30 ms)")
		s := brokerSpec{name: "wan", imapUp: e.imapWAN.Addr(), imapCA: e.dovecot.CAFile, mailboxes: wan}
		if e.smtpWAN != nil {
			s.smtpUp, s.smtpCA = e.smtpWAN.Addr(), e.postfix.CAFile
		}
		if e.wan, err = e.startBroker(s); err != nil {
			return err
		}
	}
	return nil
}

// tokenRow checks that each account made exactly one token request: the
// run is shorter than a token's lifetime.
func (e *env) tokenRow(elapsed time.Duration) *row {
	r := &row{Case: "tokens", What: fmt.Sprintf("token requests per account (%d accounts)", len(e.accounts)), Unit: "requests",
		Target: target{Kind: equal, Value: 1, Unit: "each"}}
	counts := e.entra.TokenRequestsByClient()
	perAccount := map[string]int64{}
	var lo, hi int64 = -1, 0
	var off []string
	for _, a := range e.accounts {
		n := counts[a.clientID]
		perAccount[a.broker+"/"+a.mailbox] = n
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
		if n != 1 {
			off = append(off, fmt.Sprintf("%s/%s: %d", a.broker, a.mailbox, n))
		}
	}
	r.Raw = map[string]any{"per_account": perAccount, "direct_path": counts[e.directID], "run_seconds": elapsed.Seconds()}
	if len(e.accounts) == 0 {
		return r.done(nil)
	}
	worst := hi
	if lo != 1 {
		worst = lo
	}
	r.Broker = ptr(float64(worst))
	r.Note = fmt.Sprintf("%d accounts, min %d max %d; the direct path made %d; run %.0f s, token lifetime 75 min", len(e.accounts), lo, hi, counts[e.directID], elapsed.Seconds())
	if len(off) > 0 {
		r.Note += "; off: " + strings.Join(off[:min(len(off), maxListed)], ", ")
	}
	r.done(nil)
	ok := len(off) == 0
	r.OK = &ok
	return r
}

// bytesRow sums up the byte-for-byte checks.
func (e *env) bytesRow() *row {
	v := e.verify
	r := &row{Case: "bytes", What: "relayed and fetched bytes as sent/stored", Unit: "mismatches",
		Target: target{Kind: equal, Value: 0, Unit: "mismatches"}}
	r.Broker = ptr(float64(len(v.Mismatches)))
	r.Note = fmt.Sprintf("%d messages, %.0f MiB checked against the sender's or the store's bytes", v.Messages, float64(v.Bytes)/mib)
	if v.Unexpected > 0 {
		r.Note += fmt.Sprintf("; %d delivered without a 250 to their client", v.Unexpected)
	}
	var err error
	if len(v.Mismatches) > 0 {
		err = fmt.Errorf("%s", strings.Join(v.Mismatches[:min(len(v.Mismatches), maxListed)], "; "))
	}
	return r.done(err)
}

// report prints the table, writes the JSON and returns the exit code.
func (e *env) report(m machine, rows []*row) int {
	m.LoadEnd = loadavg()
	m.DurationS = time.Since(m.Started).Seconds()
	fmt.Printf("broker %s, commit %s, %d × %s, %d MiB, Linux %s, %s, load %s → %s\n\n",
		m.Broker, m.Commit, m.CPUs, m.CPUModel, m.MemoryMiB, m.Kernel, m.GoVersion, m.LoadStart, m.LoadEnd)
	writeTable(os.Stdout, rows)
	code := 0
	for _, r := range rows {
		if r.Error != "" {
			code = 1
		}
	}
	if e.o.jsonPath != "" {
		rep := &report{Machine: m, Rows: rows, Verified: e.verify}
		if err := writeJSON(e.o.jsonPath, rep); err != nil {
			fmt.Fprintln(os.Stderr, "perf:", err)
			code = 1
		}
	}
	return code
}
