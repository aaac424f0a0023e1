package smtp

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"github.com/mailbroker/broker/proxy/internal/proxytest"
)

// scriptedUpstream is an implicit-TLS submission server that refuses the
// first DATA command itself (before any 354) and, like a real server,
// refuses a MAIL while a transaction is open.
func scriptedUpstream(t *testing.T) (addr string, commands chan string) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{proxytest.MustCert(t).Cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	commands = make(chan string, 64)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveScripted(conn, commands)
		}
	}()
	return ln.Addr().String(), commands
}

func serveScripted(conn net.Conn, commands chan<- string) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	say := func(s string) { conn.Write([]byte(s + "\r\n")) }
	say("220 scripted ESMTP")
	inTx, refusedData, authed := false, false, false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.Fields(line + " x")[0])
		if cmd == "AUTH" {
			authed = true
		}
		// Only the logged-in session's commands: the proxy's capability
		// probe, which never logs in, may come in between.
		if authed {
			select {
			case commands <- cmd:
			default:
			}
		}
		switch cmd {
		case "EHLO":
			say("250-scripted\r\n250-AUTH XOAUTH2\r\n250 8BITMIME")
		case "AUTH":
			say("235 2.7.0 Authentication successful")
		case "MAIL":
			if inTx {
				say("503 5.5.1 Error: nested MAIL command")
				continue
			}
			inTx = true
			say("250 2.1.0 Ok")
		case "RCPT":
			say("250 2.1.5 Ok")
		case "DATA":
			if !refusedData {
				refusedData = true
				say("451 4.3.0 Error: queue file write error")
				continue
			}
			say("354 End data with <CR><LF>.<CR><LF>")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			inTx = false
			say("250 2.0.0 Ok: queued as SCRIPTED1")
		case "RSET":
			inTx = false
			say("250 2.0.0 Ok")
		case "NOOP":
			say("250 2.0.0 Ok")
		case "QUIT":
			say("221 2.0.0 Bye")
			return
		default:
			say("502 5.5.2 Error: command not recognized")
		}
	}
}

// An upstream refusing the DATA command leaves its transaction open: the
// session ends it with RSET, so that the client's next transaction is not
// refused as a nested MAIL.
func TestSMTPDataRefusedUpstreamResets(t *testing.T) {
	upAddr, commands := scriptedUpstream(t)
	_, addr, _ := startSMTPProxy(t, Options{Upstream: upAddr, UpstreamImplicitTLS: true}, nil, nil)
	c := loginSMTP(t, addr)
	if got := smtpCode(send(c, sender, []string{recipient}, testMessage)); got != "451 4.3.0" {
		t.Fatalf("first message: got %s, want upstream's 451 4.3.0", got)
	}
	if err := send(c, sender, []string{recipient}, testMessage); err != nil {
		t.Fatalf("second message in the same session: %v", err)
	}
	var seen []string
	for len(commands) > 0 {
		seen = append(seen, <-commands)
	}
	if got := strings.Join(seen, " "); !strings.Contains(got, "DATA RSET") {
		t.Fatalf("upstream saw %q, want an RSET between the refused DATA and the next MAIL", got)
	}
}
