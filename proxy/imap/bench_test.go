package imap

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy"
	"github.com/mailbroker/broker/proxy/internal/proxytest"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// stubProcessEnv makes the test binary run a stub upstream instead of the
// tests: the memory test measures the proxy alone in its process.
const stubProcessEnv = "PROXY_TEST_STUB_UPSTREAM"

func TestMain(m *testing.M) {
	if os.Getenv(stubProcessEnv) == "1" {
		os.Exit(runStubProcess())
	}
	os.Exit(m.Run())
}

// runStubProcess prints the stub's address and certificate, then serves
// until stdin closes.
func runStubProcess() int {
	cert, err := proxytest.NewCert()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s := defaultStub()
	if err := s.start(cert); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%s %s\n", s.addr, base64.StdEncoding.EncodeToString(cert.PEM))
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func startStubProcess(t *testing.T) (addr string, pool *x509.CertPool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), stubProcessEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("stub process: %v", err)
	}
	addr, certB64, _ := strings.Cut(strings.TrimSpace(line), " ")
	pem, err := base64.StdEncoding.DecodeString(certB64)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return addr, pool
}

// openIdle logs in through the proxy and leaves the session in IDLE.
func openIdle(addr, user string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "a LOGIN "+user+" pw\r\nb IDLE\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 256)
	var got []string
	for len(got) < 4 {
		l, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("after %q: %w", got, err)
		}
		got = append(got, strings.TrimSpace(l))
	}
	if !strings.HasPrefix(got[1], "a OK") || got[2] != "+ idling" || got[3] != "* 1 EXISTS" {
		c.Close()
		return nil, fmt.Errorf("got %q", got)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func openIdleMany(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := openIdle(addr, "user"+strconv.Itoa(i)+"@example.com")
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

func memInUse() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse
}

// idleSessionsEnv sets how many sessions TestIMAPIdleSessionMemory opens.
const idleSessionsEnv = "BROKER_IDLE_SESSIONS"

// fdsPerIdleSession are the descriptors each session costs this process:
// the client's end and the proxy's two sockets; fdsSpare, the others.
const (
	fdsPerIdleSession = 3
	fdsSpare          = 64
)

// maxIdleSessionBytes is issue #10's bound on the memory an idle IMAP
// session holds.
const maxIdleSessionBytes = 32 << 10

// TestIMAPIdleSessionMemory measures the proxy's memory per spliced session
// sitting in IDLE: 500, or $BROKER_IDLE_SESSIONS. The upstream runs in
// another process; the clients' side of the connections (a few hundred
// bytes each) is counted against the proxy.
func TestIMAPIdleSessionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 500 sessions")
	}
	n := 500
	if v := os.Getenv(idleSessionsEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", idleSessionsEnv, v)
		}
	}
	const warmSessions = 20
	if err := raiseFileLimit(uint64(fdsPerIdleSession*(n+warmSessions) + fdsSpare)); err != nil {
		t.Skipf("%d sessions: %v", n, err)
	}
	addr, pool := startStubProcess(t)
	srv, proxyAddr := startProxy(t, Options{
		Auth:        &proxytest.Auth{Pass: "pw"},
		Upstream:    addr,
		UpstreamTLS: &tls.Config{RootCAs: pool},
		Logger:      slog.New(slog.DiscardHandler),
		Limiter:     proxy.NewConnLimiter(2*n, 2*n),
	}, nil)
	warm := openIdleMany(t, proxyAddr, warmSessions)
	heap0, stack0 := memInUse()
	conns := openIdleMany(t, proxyAddr, n)
	heap1, stack1 := memInUse()
	if got := srv.Sessions(); got != n+len(warm) {
		t.Fatalf("Sessions: got %d, want %d", got, n+len(warm))
	}
	heap := (int64(heap1) - int64(heap0)) / int64(n)
	stack := (int64(stack1) - int64(stack0)) / int64(n)
	t.Logf("%d idle spliced sessions: heap %d B, stack %d B, total %.1f KiB each (%d goroutines)",
		n, heap, stack, float64(heap+stack)/1024, runtime.NumGoroutine())
	if !proxytest.RaceEnabled && heap+stack > maxIdleSessionBytes {
		t.Errorf("got %d bytes per idle session, want at most %d", heap+stack, maxIdleSessionBytes)
	}
	runtime.KeepAlive(conns)
	runtime.KeepAlive(warm)
}

// raiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit if it is
// below need, and fails if the hard limit is.
func raiseFileLimit(need uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= need {
		return nil
	}
	if l.Max < need {
		return fmt.Errorf("needs %d file descriptors, and RLIMIT_NOFILE's hard limit is %d", need, l.Max)
	}
	l.Cur = l.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}

// BenchmarkIMAPFetch downloads 10 MiB messages from the stub upstream:
// directly (TLS, as the proxy does), through a reference relay (io.Copy with
// its 32 KiB buffers, the same extra loopback hop as the proxy), and through
// the proxy.
func BenchmarkIMAPFetch(b *testing.B) {
	const size = 10 << 20
	up := startStub(b, defaultStub())
	_, proxyAddr := startProxy(b, Options{Auth: &proxytest.Auth{Pass: "pw"}, Logger: slog.New(slog.DiscardHandler)}, up)
	upTLS := &tls.Config{RootCAs: proxytest.MustCert(b).Pool}
	xoauth2Login := func(c *testClient) {
		c.Expect("* OK")
		ir := base64.StdEncoding.EncodeToString(xoauth2.Response("alice", proxytest.Token("alice")))
		c.Send("A1 AUTHENTICATE XOAUTH2 " + ir + "\r\n")
		c.Expect("A1 OK")
	}

	b.Run("direct", func(b *testing.B) {
		conn, err := tls.Dial("tcp", up.addr, upTLS)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		c := newTestClient(b, conn)
		xoauth2Login(c)
		benchFetch(b, c, size)
	})
	b.Run("iocopy", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			defer client.Close()
			upstream, err := tls.Dial("tcp", up.addr, upTLS)
			if err != nil {
				return
			}
			defer upstream.Close()
			go io.Copy(upstream, client)
			io.Copy(client, upstream)
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		c := newTestClient(b, conn)
		xoauth2Login(c)
		benchFetch(b, c, size)
	})
	b.Run("proxy", func(b *testing.B) {
		conn, err := net.Dial("tcp", proxyAddr)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		c := newTestClient(b, conn)
		c.login("alice", "pw")
		benchFetch(b, c, size)
	})
}

func benchFetch(b *testing.B, c *testClient, size int64) {
	c.Conn.SetDeadline(time.Time{})
	c.R = bufio.NewReaderSize(c.Conn, 32<<10)
	b.SetBytes(size)
	for b.Loop() {
		c.Send(fmt.Sprintf("f FETCH %d\r\n", size))
		c.Expect("* 1 FETCH")
		if _, err := io.CopyN(io.Discard, c.R, size); err != nil {
			b.Fatal(err)
		}
		c.Expect(")")
		c.Expect("f OK")
	}
}
