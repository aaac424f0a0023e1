package test

import (
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/test/m365sim"
)

// graphMaxGrowth bounds how much broker's peak resident memory may grow
// while it sends a large message through Graph: the message is spooled to
// disk, and attachments go up in chunks of 3.75 MiB.
const graphMaxGrowth = 16 << 20

// TestGraphLargeMessages sends a 20 MB and a 100 MB message with
// attachments through a broker built without the race detector: Graph
// gets subject, Message-ID, body and each attachment intact, by a draft
// and upload sessions (in chunks of a multiple of 320 KiB), and broker's
// peak resident memory grows by less than 16 MiB. The 100 MB message is
// left out when this test binary runs with the race detector (the
// simulated Graph in it would take minutes).
func TestGraphLargeMessages(t *testing.T) {
	env := newGraphEnv(t, graphEnvOptions{
		Bin:   plainBroker(t),
		Env:   []string{"GOMEMLIMIT=" + measuredMemLimit},
		Graph: m365sim.GraphOptions{ChunkMultiple: 320 << 10, KeepBytes: 1 << 10},
	})
	c := dialRawSMTP(t, env.Daemon.SMTPAddr)
	c.login(mailbox, env.Password)
	// Argon2 (at AUTH) and the first token are behind us; so is a first
	// message.
	warm := newMIMEMessage(mailbox, []string{colleague}, nil, "warm-up", "warm@contoso.com", "warm", 64<<10)
	if reply := sendRaw(t, c, mailbox, []string{colleague}, warm, time.Minute); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("warm-up: %q\n%s", reply, env.Daemon.Log())
	}
	env.waitSent(t, 1)
	pid := env.Daemon.cmd.Process.Pid
	sizes := []struct {
		name  string
		parts []int64
	}{
		{"20MB", []int64{11 << 20, 3 << 20, 1 << 20, 300 << 10}},
		{"100MB", []int64{52 << 20, 18 << 20, 4 << 20, 700 << 10}},
	}
	for i, s := range sizes {
		t.Run(s.name, func(t *testing.T) {
			if s.name == "100MB" && raceDetector {
				t.Skip("the race detector makes the simulated Graph too slow for 100 MB; run without -race")
			}
			m := newMIMEMessage(mailbox, []string{colleague}, nil, "large "+s.name, "large-"+s.name+"@contoso.com", "The "+s.name+" message.", s.parts...)
			cr := &countReader{r: m}
			resetHWM(t, pid)
			before := vmHWM(t, pid)
			start := time.Now()
			reply := sendRaw(t, c, mailbox, []string{colleague}, cr, 5*time.Minute)
			elapsed := time.Since(start)
			growth := vmHWM(t, pid) - before
			if !strings.HasPrefix(reply, "250 2.0.0 OK <") {
				t.Fatalf("end of DATA: %q\n%s", reply, env.Daemon.Log())
			}
			t.Logf("%d bytes through Graph in %v (%.1f MB/s, receiving and sending); broker's peak RSS %.1f MiB %+.2f MiB",
				cr.n, elapsed.Round(time.Millisecond), float64(cr.n)/1e6/elapsed.Seconds(), float64(before)/(1<<20), float64(growth)/(1<<20))
			got := env.waitSent(t, 2+i)[1+i]
			checkGraphSent(t, got, m, colleague)
			if got.Via != m365sim.GraphSend {
				t.Fatalf("sent via %s, want a draft and send", got.Via)
			}
			if growth > graphMaxGrowth {
				t.Fatalf("broker's peak RSS grew by %.1f MiB sending %d bytes, want less than %d MiB", float64(growth)/(1<<20), cr.n, graphMaxGrowth>>20)
			}
			if env.Graph.Drafts(mailbox) != 0 || env.Graph.UploadSessions() != 0 {
				t.Fatalf("drafts %d, upload sessions %d left", env.Graph.Drafts(mailbox), env.Graph.UploadSessions())
			}
		})
	}
}

type countReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
