package imap

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mailbroker/broker/proxy/internal/proxytest"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// stubUpstream speaks just enough IMAP for the proxy: a greeting,
// CAPABILITY, AUTHENTICATE XOAUTH2, and after login NOOP, IDLE, APPEND,
// FETCH (of a size: "FETCH <n>") and LOGOUT; other commands get an OK.
type stubUpstream struct {
	// Greeting is the greeting line.
	Greeting string
	// PreCaps and Caps are the capabilities before and after login.
	PreCaps, Caps string
	// CapsInOK puts Caps in the OK to AUTHENTICATE.
	CapsInOK bool
	// AfterLogin is sent right after the OK to AUTHENTICATE.
	AfterLogin string
	// Reject, if set, refuses every token with this status and text
	// after the error challenge, e.g. "NO AUTHENTICATE failed.".
	Reject string
	// CapFail, if set, is the answer to CAPABILITY after login.
	CapFail string

	ln   net.Listener
	cert *proxytest.Cert
	addr string

	logins     atomic.Int32
	inlineIR   atomic.Int32 // AUTHENTICATE with an initial response
	continueIR atomic.Int32 // AUTHENTICATE answered after "+"
	// accepted counts connections; lastAuth is the number (from 1, in
	// order of acceptance) of the last one that logged in.
	accepted atomic.Int32
	lastAuth atomic.Int32

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	// authed are the connections logged in; nums, the number of each.
	authed map[net.Conn]bool
	nums   map[net.Conn]int32
	wg     sync.WaitGroup
}

func defaultStub() *stubUpstream {
	return &stubUpstream{
		Greeting: "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] stub ready",
		PreCaps:  "IMAP4rev1 SASL-IR AUTH=XOAUTH2",
		Caps:     "IMAP4rev1 IDLE LITERAL+ UIDPLUS",
		CapsInOK: true,
	}
}

// start listens on 127.0.0.1 with TLS.
func (s *stubUpstream) start(cert *proxytest.Cert) error {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert.Cert}})
	if err != nil {
		return err
	}
	s.ln, s.cert, s.addr = ln, cert, ln.Addr().String()
	s.conns = make(map[net.Conn]struct{})
	s.authed = make(map[net.Conn]bool)
	s.nums = make(map[net.Conn]int32)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := s.accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.nums[c] = n
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					delete(s.authed, c)
					delete(s.nums, c)
					s.mu.Unlock()
					c.Close()
				}()
				s.serveConn(c, n)
			}()
		}
	}()
	return nil
}

func (s *stubUpstream) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// open returns how many connections are open, and how many of them are
// logged in.
func (s *stubUpstream) open() (n, authed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns), len(s.authed)
}

// preAuth returns the numbers of the open connections not logged in.
func (s *stubUpstream) preAuth() []int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ns []int32
	for c, n := range s.nums {
		if !s.authed[c] {
			ns = append(ns, n)
		}
	}
	return ns
}

// closePreAuth closes the connections not logged in, as an upstream does at
// its pre-login timeout.
func (s *stubUpstream) closePreAuth() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if !s.authed[c] {
			c.Close()
			n++
		}
	}
	return n
}

func startStub(t testing.TB, s *stubUpstream) *stubUpstream {
	t.Helper()
	if err := s.start(proxytest.MustCert(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

var fetchPattern = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte('a' + i%26)
		if i%78 == 77 {
			b[i] = '\n'
		}
	}
	return b
}()

func (s *stubUpstream) serveConn(c net.Conn, n int32) {
	br := bufio.NewReader(c)
	write := func(lines ...string) error {
		_, err := io.WriteString(c, strings.Join(lines, "\r\n")+"\r\n")
		return err
	}
	readLine := func() (string, error) {
		l, err := br.ReadString('\n')
		return strings.TrimRight(l, "\r\n"), err
	}
	if write(s.Greeting) != nil {
		return
	}
	authed := false
	for {
		line, err := readLine()
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(line, " ")
		name, args, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(name) {
		case "CAPABILITY":
			switch {
			case authed && s.CapFail != "":
				err = write(tag + " " + s.CapFail)
			case authed:
				err = write("* CAPABILITY "+s.Caps, tag+" OK CAPABILITY completed")
			default:
				err = write("* CAPABILITY "+s.PreCaps, tag+" OK CAPABILITY completed")
			}
		case "AUTHENTICATE":
			authed, err = s.authenticate(c, n, tag, args, write, readLine)
		case "NOOP":
			err = write(tag + " OK NOOP done by stub")
		case "IDLE":
			if err = write("+ idling", "* 1 EXISTS"); err != nil {
				return
			}
			if l, err := readLine(); err != nil || l != "DONE" {
				return
			}
			err = write(tag + " OK IDLE terminated")
		case "APPEND":
			n, sync, ok := stubLiteral(args)
			if !ok {
				err = write(tag + " BAD no literal")
				break
			}
			if sync {
				if err = write("+ Ready for literal data"); err != nil {
					return
				}
			}
			h := sha256.New()
			if _, err = io.CopyN(h, br, n); err != nil {
				return
			}
			if _, err = readLine(); err != nil {
				return
			}
			err = write(fmt.Sprintf("%s OK APPEND %d %s", tag, n, hex.EncodeToString(h.Sum(nil))))
		case "FETCH":
			n, _ := strconv.Atoi(args)
			err = s.fetch(c, tag, n)
		case "LOGOUT":
			write("* BYE stub logging out", tag+" OK LOGOUT completed")
			return
		default:
			err = write(tag + " OK " + name + " done by stub")
		}
		if err != nil {
			return
		}
	}
}

// stubLiteral parses the "{n}" or "{n+}" ending args.
func stubLiteral(args string) (n int64, sync, ok bool) {
	i := strings.LastIndexByte(args, '{')
	if i < 0 || !strings.HasSuffix(args, "}") {
		return 0, false, false
	}
	m := args[i+1 : len(args)-1]
	m, plus := strings.CutSuffix(m, "+")
	n, err := strconv.ParseInt(m, 10, 64)
	return n, !plus, err == nil
}

// fetch sends n bytes of fetchPattern as a message body.
func (s *stubUpstream) fetch(c net.Conn, tag string, n int) error {
	if _, err := fmt.Fprintf(c, "* 1 FETCH (BODY[] {%d}\r\n", n); err != nil {
		return err
	}
	for n > 0 {
		m := min(n, len(fetchPattern))
		if _, err := c.Write(fetchPattern[:m]); err != nil {
			return err
		}
		n -= m
	}
	_, err := io.WriteString(c, ")\r\n"+tag+" OK FETCH completed\r\n")
	return err
}

func (s *stubUpstream) authenticate(c net.Conn, n int32, tag, args string, write func(...string) error, readLine func() (string, error)) (bool, error) {
	mech, ir, hasIR := strings.Cut(args, " ")
	if !strings.EqualFold(mech, "XOAUTH2") {
		return false, write(tag + " NO unsupported mechanism")
	}
	if hasIR {
		s.inlineIR.Add(1)
	} else {
		s.continueIR.Add(1)
		if err := write("+ "); err != nil {
			return false, err
		}
		var err error
		if ir, err = readLine(); err != nil {
			return false, err
		}
	}
	resp, err := base64.StdEncoding.DecodeString(ir)
	if err != nil {
		return false, write(tag + " BAD invalid base64")
	}
	srv := xoauth2.NewServer(func(user, token string) error {
		if s.Reject != "" || token != proxytest.Token(user) {
			return errors.New("bad token")
		}
		return nil
	}, nil)
	chal, done, err := srv.Next(resp)
	for !done && err == nil {
		if err := write("+ " + base64.StdEncoding.EncodeToString(chal)); err != nil {
			return false, err
		}
		l, rerr := readLine()
		if rerr != nil {
			return false, rerr
		}
		if resp, rerr = base64.StdEncoding.DecodeString(l); rerr != nil {
			return false, write(tag + " BAD invalid base64")
		}
		chal, done, err = srv.Next(resp)
	}
	if err != nil {
		reply := s.Reject
		if reply == "" {
			reply = "NO AUTHENTICATE failed."
		}
		return false, write(tag + " " + reply)
	}
	s.logins.Add(1)
	s.lastAuth.Store(n)
	s.mu.Lock()
	s.authed[c] = true
	s.mu.Unlock()
	ok := tag + " OK AUTHENTICATE completed."
	if s.CapsInOK {
		ok = tag + " OK [CAPABILITY " + s.Caps + "] AUTHENTICATE completed."
	}
	if err := write(ok); err != nil {
		return false, err
	}
	if s.AfterLogin != "" {
		if _, err := io.WriteString(c, s.AfterLogin); err != nil {
			return false, err
		}
	}
	return true, nil
}

// startProxy starts an Server on 127.0.0.1. opts.Upstream defaults to
// up's address and opts.UpstreamTLS to trusting the test certificate.
func startProxy(t testing.TB, opts Options, up *stubUpstream) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveProxy(t, opts, up, ln), ln.Addr().String()
}

func serveProxy(t testing.TB, opts Options, up *stubUpstream, ln net.Listener) *Server {
	t.Helper()
	if opts.Upstream == "" && up != nil {
		opts.Upstream = up.addr
	}
	if opts.UpstreamTLS == nil {
		opts.UpstreamTLS = &tls.Config{RootCAs: proxytest.MustCert(t).Pool}
	}
	if opts.Logger == nil {
		opts.Logger, _ = proxytest.NewLogger(t)
	}
	srv := NewServer(&opts)
	proxytest.Serve(t, srv, ln)
	return srv
}

// testClient is a raw IMAP client.
type testClient struct{ *proxytest.Client }

func dialClient(t testing.TB, addr string) *testClient {
	t.Helper()
	return &testClient{proxytest.Dial(t, addr)}
}

func newTestClient(t testing.TB, c net.Conn) *testClient {
	return &testClient{proxytest.NewClient(t, c)}
}

// greet reads the greeting.
func (c *testClient) greet() string {
	c.T.Helper()
	return c.Expect("* OK [CAPABILITY IMAP4rev1 ")
}

// login greets and logs in with LOGIN.
func (c *testClient) login(user, pass string) {
	c.T.Helper()
	c.greet()
	c.Send("L1 LOGIN " + user + " " + pass + "\r\n")
	c.Expect("L1 OK [CAPABILITY ")
}
