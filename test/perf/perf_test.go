package main

// Smoke tests of the benchmark's parts that need no Dovecot or Postfix: the
// WAN link as configured, the messages and their checks, the IMAP client's
// literal handling, and the report. The benchmark itself is `make perf`.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/netem"
)

// TestWANLink: the forwarder as the benchmark configures it adds at least
// the 30 ms round trip to every exchange and keeps the bytes.
func TestWANLink(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	f, err := netem.Listen(ln.Addr().String(), netem.Link{Delay: wanDelay, Rate: wanRate})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("tcp", f.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for i := range 3 {
		msg := fmt.Appendf(nil, "ping %d\n", i)
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 30*time.Millisecond {
			t.Fatalf("exchange %d took %v, want at least 30 ms", i, rtt)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("got %q, want %q", got, msg)
		}
	}
}

// unstuff undoes dot-stuffing as an SMTP server does.
func unstuff(t *testing.T, wire []byte) []byte {
	t.Helper()
	body, ok := bytes.CutSuffix(wire, []byte(".\r\n"))
	if !ok {
		t.Fatalf("wire form does not end with the final dot: %q", wire[max(0, len(wire)-10):])
	}
	var out []byte
	for line := range bytes.Lines(body) {
		if line[0] == '.' {
			line = line[1:]
		}
		out = append(out, line...)
	}
	return out
}

func TestMessage(t *testing.T) {
	m := newMessage("test-1@contoso.com", sendBox, sinkBox, 64<<10)
	if len(m.raw) < 64<<10 || len(m.raw) > 64<<10+2*maxBodyLine {
		t.Fatalf("message of %d bytes, want about %d", len(m.raw), 64<<10)
	}
	if got := unstuff(t, m.wire); !bytes.Equal(got, m.raw) {
		t.Fatal("the wire form does not unstuff to the message")
	}
	if m.sum != sha256.Sum256(m.raw) {
		t.Fatal("sum is not the message's SHA-256")
	}
	var dotted, lone bool
	for line := range bytes.Lines(m.raw) {
		if !bytes.HasSuffix(line, []byte("\r\n")) || bytes.IndexByte(line[:len(line)-2], '\n') >= 0 {
			t.Fatalf("line %q does not end with CRLF alone", line)
		}
		if len(line) > 998 {
			t.Fatalf("line of %d octets, more than SMTP allows", len(line))
		}
		dotted = dotted || len(line) > 3 && line[0] == '.'
		lone = lone || string(line) == ".\r\n"
	}
	if !dotted || !lone {
		t.Fatalf("message lacks lines starting with a dot (%v) or a lone dot (%v)", dotted, lone)
	}
	if other := newMessage("test-2@contoso.com", sendBox, sinkBox, 64<<10); other.sum == m.sum {
		t.Fatal("two messages have the same bytes")
	}
}

func TestParseDelivered(t *testing.T) {
	m := newMessage("delivered@contoso.com", sendBox, sinkBox, 8<<10)
	trace := "Return-Path: <send@contoso.com>\r\nDelivered-To: sink@contoso.com\r\n" +
		"Received: from localhost (localhost [127.0.0.1])\r\n\tby host (Postfix) with ESMTPSA id 4ABC\r\n\tfor <sink@contoso.com>; Mon, 30 Nov 2026 12:00:00 +0000 (UTC)\r\n"
	d, err := parseDelivered(strings.NewReader(trace + string(m.raw)))
	if err != nil {
		t.Fatal(err)
	}
	if d.id != m.id || d.size != int64(len(m.raw)) || d.sum != m.sum {
		t.Fatalf("parsed %q, %d bytes; want %q, %d bytes, the same sum", d.id, d.size, m.id, len(m.raw))
	}
	changed := bytes.Clone(m.raw)
	changed[len(changed)-3] ^= 1
	d, err = parseDelivered(strings.NewReader(trace + string(changed)))
	if err != nil {
		t.Fatal(err)
	}
	if d.sum == m.sum {
		t.Fatal("a changed byte went unnoticed")
	}
}

// fakeIMAP serves one scripted connection: for each expected command, the
// lines to answer (tag replaced).
func fakeIMAP(t *testing.T, script map[string]string) *imapConn {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	go func() {
		br := bufio.NewReader(server)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			answer, ok := script[cmd]
			if !ok {
				answer = "TAG BAD unknown command\r\n"
			}
			if _, err := io.WriteString(server, strings.ReplaceAll(answer, "TAG", tag)); err != nil {
				return
			}
		}
	}()
	return &imapConn{c: client, r: bufio.NewReader(client)}
}

func TestIMAPClientLiterals(t *testing.T) {
	body := "Subject: x\r\n\r\n{5}\r\nnot a literal\r\n"
	c := fakeIMAP(t, map[string]string{
		"UID FETCH 7 (BODY.PEEK[])": fmt.Sprintf("* 1 FETCH (UID 7 BODY[] {%d}\r\n%s FLAGS (\\Seen))\r\n* 3 EXISTS\r\nTAG OK done\r\n", len(body), body),
		"SELECT INBOX":              "* 2 EXISTS\r\n* OK [UIDNEXT 9] next\r\nTAG OK [READ-WRITE] done\r\n",
		"NOOP":                      "TAG NO [UNAVAILABLE] try later\r\n",
	})
	var got bytes.Buffer
	n, err := c.fetchUID(7, &got)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(body)) || got.String() != body {
		t.Fatalf("fetched %d bytes %q, want %q", n, got.String(), body)
	}
	count, next, err := selectInbox(c)
	if err != nil || count != 2 || next != 9 {
		t.Fatalf("SELECT: %d messages, UIDNEXT %d, %v; want 2, 9", count, next, err)
	}
	if _, err := c.command("NOOP", nil); err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("NOOP answered NO: got %v, want the refusal", err)
	}
}

func TestEachRoundAlternates(t *testing.T) {
	var order []string
	if err := eachRound(3, func(path string) error { order = append(order, path); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []string{"direct", "broker", "broker", "direct", "direct", "broker"}
	if !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	err := eachRound(2, func(path string) error {
		if path == "broker" {
			return fmt.Errorf("refused")
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "broker path: refused") {
		t.Fatalf("got %v, want the path's error", err)
	}
}

func TestJudge(t *testing.T) {
	for _, c := range []struct {
		name           string
		broker, direct float64
		target         target
		want           string
	}{
		{"ratio met", 95, 100, target{Kind: atLeastRatio, Value: 0.9}, "pass"},
		{"ratio missed", 80, 100, target{Kind: atLeastRatio, Value: 0.9}, "miss"},
		{"latency met", 30, 120, target{Kind: atMostRatio, Value: 0.8}, "pass"},
		{"latency missed", 110, 120, target{Kind: atMostRatio, Value: 0.8}, "miss"},
		{"below", 7.9, 0, target{Kind: below, Value: 8}, "pass"},
		{"not below", 8, 0, target{Kind: below, Value: 8}, "miss"},
		{"at most", 32, 0, target{Kind: atMost, Value: 32}, "pass"},
		{"equal", 0, 0, target{Kind: equal, Value: 0}, "pass"},
		{"not equal", 2, 0, target{Kind: equal, Value: 0}, "miss"},
	} {
		r := &row{Broker: ptr(c.broker), Target: c.target}
		if c.direct != 0 {
			r.Direct = ptr(c.direct)
		}
		if got := r.done(nil).verdict(); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	r := (&row{Broker: ptr(1), Direct: ptr(1), Target: target{Kind: atLeastRatio, Value: 0.9}}).done(fmt.Errorf("broken"))
	if r.verdict() != "error" || r.OK != nil {
		t.Fatalf("a row with an error: %s, OK %v; want error and no verdict", r.verdict(), r.OK)
	}
}

func TestReport(t *testing.T) {
	rows := []*row{
		(&row{Case: "smtp-100k", What: "50 × 100 KiB", Unit: "msgs/s", Broker: ptr(95), Direct: ptr(100), Target: target{Kind: atLeastRatio, Value: 0.9}}).done(nil),
		(&row{Case: "wan-login", What: "p50", Unit: "ms", Broker: ptr(130), Direct: ptr(120), Target: target{Kind: atMostRatio, Value: 0.8}}).done(nil),
		(&row{Case: "idle", What: "failures", Unit: "sessions", Note: "a note", Target: target{Kind: equal, Value: 0}}).done(fmt.Errorf("broker exited")),
	}
	var out bytes.Buffer
	if err := writeTable(&out, rows); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"0.95×", "≥ 0.90×", "pass", "1.08×", "≤ 0.80×", "miss", "error", "idle: a note", "idle: error: broker exited"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	path := filepath.Join(t.TempDir(), "perf.json")
	m := machineInfo(".")
	if err := writeJSON(path, &report{Machine: m, Rows: rows}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got report
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Rows) != 3 || *got.Rows[0].Ratio != 0.95 || !*got.Rows[0].OK || *got.Rows[1].OK || got.Rows[2].Error != "broker exited" {
		t.Fatalf("JSON rows do not round-trip:\n%s", data)
	}
	if got.Machine.CPUs < 1 || got.Machine.GoVersion == "" || got.Machine.Kernel == "" {
		t.Fatalf("machine description incomplete: %+v", got.Machine)
	}
}
