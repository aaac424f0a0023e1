package pop3

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/internal/proxytest"
	"github.com/mailbroker/broker/proxy/xoauth2"
)

// stubConfig scripts a stub upstream POP3 server.
type stubConfig struct {
	greeting string
	capa     []string // nil: CAPA is unknown
	// refuse is the -ERR text for every XOAUTH2 login ("" accepts tokens
	// from proxytest.Token); errorChallenge sends "+ <b64>" first.
	refuse         string
	errorChallenge bool
	// messages are each user's, listed at login.
	messages map[string][]string
	// retrHalted, when set, gets each RETR's first half written; the
	// rest follows once retrGo is closed.
	retrHalted chan struct{}
	retrGo     chan struct{}
}

func defaultStub() *stubConfig {
	return &stubConfig{
		greeting: "+OK stub POP3 ready",
		capa:     []string{"TOP", "UIDL", "SASL XOAUTH2", "USER", "PIPELINING"},
		messages: map[string][]string{"alice@example.com": {
			"Subject: one\r\n\r\nfirst\r\n.dotted\r\n",
			"Subject: two\r\n\r\nsecond\r\n",
		}},
	}
}

// stub is a running stub upstream.
type stub struct {
	t    *testing.T
	cfg  *stubConfig
	ln   net.Listener
	addr string
	pool *proxytest.Cert

	mu       sync.Mutex
	logins   int
	deleted  map[string][]int // user -> message numbers deleted at QUIT
	lines    []string         // every line received
	sessions int
	// preAuth are the numbers (from 1, in order of acceptance) of the
	// connections open and not logged in; lastLogin, of the last one
	// that logged in.
	preAuth   map[int]bool
	lastLogin int
}

func startStub(t *testing.T, cfg *stubConfig) *stub {
	t.Helper()
	cert := proxytest.MustCert(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert.Cert}})
	if err != nil {
		t.Fatal(err)
	}
	s := &stub{t: t, cfg: cfg, ln: ln, addr: ln.Addr().String(), pool: cert, deleted: map[string][]int{}, preAuth: map[int]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				s.serve(c)
			})
		}
	})
	return s
}

func (s *stub) Logins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins
}

// PreAuth returns the numbers of the connections open and not logged in.
func (s *stub) PreAuth() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ns []int
	for n := range s.preAuth {
		ns = append(ns, n)
	}
	return ns
}

// LastLogin returns the number of the last connection that logged in.
func (s *stub) LastLogin() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastLogin
}

func (s *stub) Deleted(user string) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.deleted[user]...)
}

func (s *stub) Lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func (s *stub) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	s.mu.Lock()
	s.sessions++
	n := s.sessions
	s.preAuth[n] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.preAuth, n)
		s.mu.Unlock()
	}()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	reply := func(lines ...string) bool {
		for _, l := range lines {
			w.WriteString(l + "\r\n")
		}
		return w.Flush() == nil
	}
	read := func() (string, bool) {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", false
		}
		l = strings.TrimRight(l, "\r\n")
		s.mu.Lock()
		s.lines = append(s.lines, l)
		s.mu.Unlock()
		return l, true
	}
	reply(s.cfg.greeting)
	var user string
	var msgs []string
	var dele map[int]bool
	for {
		line, ok := read()
		if !ok {
			return
		}
		verb, rest, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		switch {
		case verb == "CAPA":
			if s.cfg.capa == nil {
				reply("-ERR Unknown command")
				continue
			}
			reply(append(append([]string{"+OK"}, s.cfg.capa...), ".")...)
		case verb == "QUIT":
			if user != "" {
				s.mu.Lock()
				for i := range msgs {
					if dele[i+1] {
						s.deleted[user] = append(s.deleted[user], i+1)
					}
				}
				s.mu.Unlock()
			}
			reply("+OK bye")
			return
		case user == "" && verb == "AUTH" && strings.EqualFold(rest, "XOAUTH2"):
			reply("+ ")
			resp, ok := read()
			if !ok {
				return
			}
			raw, _ := base64.StdEncoding.DecodeString(resp)
			u, tok, err := xoauth2.ParseResponse(raw)
			if err != nil || s.cfg.refuse != "" || tok != proxytest.Token(u) {
				if s.cfg.errorChallenge {
					reply("+ " + base64.StdEncoding.EncodeToString([]byte(`{"status":"401"}`)))
					if _, ok := read(); !ok {
						return
					}
				}
				text := s.cfg.refuse
				if text == "" {
					text = "Authentication failure: unknown user name or bad password."
				}
				reply("-ERR " + text)
				continue
			}
			user, msgs, dele = u, s.cfg.messages[u], map[int]bool{}
			s.mu.Lock()
			s.logins++
			s.lastLogin = n
			delete(s.preAuth, n)
			s.mu.Unlock()
			reply("+OK User successfully authenticated.")
		case user == "":
			reply("-ERR Command is not valid in this state.")
		case verb == "STAT":
			size := 0
			for _, m := range msgs {
				size += len(m)
			}
			reply(fmt.Sprintf("+OK %d %d", len(msgs), size))
		case verb == "UIDL":
			lines := []string{"+OK"}
			for i := range msgs {
				lines = append(lines, fmt.Sprintf("%d uid%d", i+1, i+1))
			}
			reply(append(lines, ".")...)
		case verb == "RETR" || verb == "TOP":
			n, _ := strconv.Atoi(strings.Fields(rest + " x")[0])
			if n < 1 || n > len(msgs) {
				reply("-ERR no such message")
				continue
			}
			body := msgs[n-1]
			if verb == "TOP" {
				body, _, _ = strings.Cut(body, "\r\n\r\n")
				body += "\r\n\r\n"
			}
			var b bytes.Buffer
			b.WriteString("+OK\r\n")
			for _, l := range strings.SplitAfter(body, "\r\n") {
				if strings.HasPrefix(l, ".") {
					b.WriteString(".")
				}
				b.WriteString(l)
			}
			b.WriteString(".\r\n")
			if verb == "RETR" && s.cfg.retrHalted != nil {
				half := b.Len() / 2
				w.Write(b.Next(half))
				w.Flush()
				s.cfg.retrHalted <- struct{}{}
				<-s.cfg.retrGo
			}
			w.Write(b.Bytes())
			w.Flush()
		case verb == "DELE":
			n, _ := strconv.Atoi(rest)
			dele[n] = true
			reply("+OK")
		case verb == "NOOP":
			reply("+OK")
		default:
			reply("-ERR Unknown command.")
		}
	}
}
