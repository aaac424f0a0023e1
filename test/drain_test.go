package test

import (
	"bufio"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// drainConfig sets a drain timeout the tests can wait out.
const drainConfig = "\n[limits]\ndrain_timeout = \"10s\"\n"

// waitExit waits for the daemon to exit after a signal, and fails unless
// it exited 0 within limit. It returns how long it took.
func (d *daemon) waitExit(t *testing.T, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	select {
	case <-d.exited:
	case <-time.After(limit + 10*time.Second):
		t.Fatalf("broker did not exit within %v of SIGTERM\n%s", limit, d.Log())
	}
	took := time.Since(since)
	if d.err != nil {
		t.Fatalf("broker exited with %v after SIGTERM, want 0\n%s", d.err, d.Log())
	}
	if took > limit {
		t.Fatalf("broker took %v to exit, more than %v", took, limit)
	}
	return took
}

var drainedRE = regexp.MustCompile(`msg=drained duration=(\S+)`)

// byeClient is an IMAP client speaking exactly what a test writes.
type byeClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialByeClient(t *testing.T, addr string) *byeClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &byeClient{t: t, conn: c, r: bufio.NewReader(c)}
	s.expect("* OK")
	return s
}

// expect reads lines until one starts with prefix, and returns it.
func (s *byeClient) expect(prefix string) string {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	var seen []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("waiting for %q: %v after %q", prefix, err, seen)
		}
		line = strings.TrimRight(line, "\r\n")
		if strings.HasPrefix(line, prefix) {
			return line
		}
		seen = append(seen, line)
	}
}

func (s *byeClient) send(line string) {
	s.t.Helper()
	if _, err := s.conn.Write([]byte(line + "\r\n")); err != nil {
		s.t.Fatal(err)
	}
}

// eof checks that the server closed the connection with nothing more.
func (s *byeClient) eof() {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := s.r.ReadString('\n')
	if err == nil || rest != "" {
		s.t.Fatalf("after BYE: %q, %v; want the connection closed", rest, err)
	}
	// As a client does on BYE; broker waits a moment for it.
	s.conn.Close()
}

// lingerAfterBye is how long broker waits for a client to close after its
// BYE (the client's last bytes would otherwise reset the BYE away).
const lingerAfterBye = 2 * time.Second

// TestSIGTERMDuringIDLE: clients in IDLE, between commands and not yet
// logged in all get a BYE at once, not at the drain timeout, and broker
// exits 0.
func TestSIGTERMDuringIDLE(t *testing.T) {
	env := newOpsEnv(t, drainConfig, mailbox)
	addr := env.Daemon.IMAPAddr

	idler := dialByeClient(t, addr)
	idler.send("a1 LOGIN " + mailbox + " " + env.Password)
	idler.expect("a1 OK")
	idler.send("a2 SELECT INBOX")
	idler.expect("a2 OK")
	idler.send("a3 IDLE")
	idler.expect("+ ")

	between := dialByeClient(t, addr)
	between.send("b1 LOGIN " + mailbox + " " + env.Password)
	between.expect("b1 OK")
	between.send("b2 NOOP")
	between.expect("b2 OK")

	notLoggedIn := dialByeClient(t, addr)

	sent := time.Now()
	if err := env.Daemon.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*byeClient{"in IDLE": idler, "between commands": between, "not logged in": notLoggedIn} {
		bye := s.expect("* BYE")
		t.Logf("client %s got %q after %v", name, bye, time.Since(sent).Round(time.Millisecond))
		s.eof()
	}
	took := env.Daemon.waitExit(t, sent, 10*time.Second)
	drained := drainedRE.FindStringSubmatch(env.Daemon.Log())
	if drained == nil {
		t.Fatalf("no drained line\n%s", env.Daemon.Log())
	}
	t.Logf("drained in %s, exited %v after SIGTERM", drained[1], took.Round(time.Millisecond))
	if took > lingerAfterBye {
		t.Fatalf("exit took %v: the BYEs waited for something\n%s", took, env.Daemon.Log())
	}
}

// TestSIGTERMWaitsForCommandInFlight: a command upstream is still
// answering is not cut: its response comes whole, then the BYE.
func TestSIGTERMWaitsForCommandInFlight(t *testing.T) {
	env := newOpsEnv(t, drainConfig, mailbox)
	appendMessage(t, env.Daemon.IMAPAddr, mailbox, env.Password, "big one")
	s := dialByeClient(t, env.Daemon.IMAPAddr)
	s.send("a1 LOGIN " + mailbox + " " + env.Password)
	s.expect("a1 OK")
	s.send("a2 SELECT INBOX")
	s.expect("a2 OK")
	// An APPEND whose literal the client has not finished: in flight.
	body := "Subject: in flight\r\n\r\n" + strings.Repeat("x", 5000) + "\r\n"
	s.send("a3 APPEND INBOX {" + strconv.Itoa(len(body)) + "}")
	s.expect("+ ")
	s.conn.Write([]byte(body[:100]))
	sent := time.Now()
	env.Daemon.cmd.Process.Signal(syscall.SIGTERM)
	env.Daemon.waitLog("msg=\"shutting down\"")
	time.Sleep(300 * time.Millisecond)
	s.conn.Write([]byte(body[100:] + "\r\n"))
	s.expect("a3 OK")
	s.expect("* BYE")
	s.eof()
	// a3 OK is upstream's: the message is stored.
	env.Daemon.waitExit(t, sent, 10*time.Second)
}

// TestSIGTERMDuringDATA: a message being transferred when broker is told
// to stop is delivered, and broker then exits 0.
func TestSIGTERMDuringDATA(t *testing.T) {
	env := newSMTPSimEnv(t, smtpSimOptions{Config: drainConfig})
	c := dialSMTP(t, env.Daemon.SMTPAddr, mailbox, env.Password)
	if err := c.Mail(mailbox, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(mailbox, nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	msg := smtpMessage("sent across a stop", "drain@test")
	if _, err := w.Write([]byte(msg[:len(msg)/2])); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	env.Daemon.cmd.Process.Signal(syscall.SIGTERM)
	env.Daemon.waitLog("msg=\"shutting down\"")
	time.Sleep(500 * time.Millisecond)
	if _, err := w.Write([]byte(msg[len(msg)/2:])); err != nil {
		t.Fatalf("writing the rest of the message after SIGTERM: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA after SIGTERM: %v\n%s", err, env.Daemon.Log())
	}
	msgs := env.waitMessages(t, 1)
	if !strings.Contains(string(msgs[0].Data), "Subject: sent across a stop") {
		t.Fatalf("delivered %q", msgs[0].Data)
	}
	took := env.Daemon.waitExit(t, sent, 10*time.Second)
	t.Logf("exited %v after SIGTERM, the message delivered", took.Round(time.Millisecond))
}
