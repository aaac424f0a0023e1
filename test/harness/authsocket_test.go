package harness

import (
	"bufio"
	"encoding/base64"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// TestDovecotAuthSocket speaks Dovecot's auth client protocol on
// AuthSocket, as Postfix's smtpd_sasl_type = dovecot will.
func TestDovecotAuthSocket(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	if u, err := user.Lookup("postfix"); err == nil {
		fi, err := os.Stat(f.dv.AuthSocket)
		if err != nil {
			t.Fatalf("stat AuthSocket: %v", err)
		}
		if got := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)); got != u.Uid {
			t.Fatalf("AuthSocket owned by uid %s, want postfix (%s)", got, u.Uid)
		}
	}
	conn, err := net.Dial("unix", f.dv.AuthSocket)
	if err != nil {
		t.Fatalf("dial AuthSocket: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := conn.Write([]byte("VERSION\t1\t2\nCPID\t" + strconv.Itoa(os.Getpid()) + "\n")); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	var mechs []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading handshake: %v", err)
		}
		if line == "DONE\n" {
			break
		}
		if m, ok := strings.CutPrefix(line, "MECH\t"); ok {
			mechs = append(mechs, strings.Fields(m)[0])
		}
	}
	if len(mechs) != 1 || mechs[0] != "XOAUTH2" {
		t.Fatalf("got mechanisms %v, want [XOAUTH2]", mechs)
	}

	auth := func(id int, token string) string {
		t.Helper()
		resp := base64.StdEncoding.EncodeToString(xoauth2.Response(testMailbox, token))
		req := "AUTH\t" + strconv.Itoa(id) + "\tXOAUTH2\tservice=smtp\tsecured\tresp=" + resp + "\n"
		if _, err := conn.Write([]byte(req)); err != nil {
			t.Fatalf("AUTH: %v", err)
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading AUTH reply: %v", err)
			}
			if cont, ok := strings.CutPrefix(line, "CONT\t"); ok {
				// The XOAUTH2 error challenge; an empty response ends it.
				if _, err := conn.Write([]byte("CONT\t" + strings.Fields(cont)[0] + "\t\n")); err != nil {
					t.Fatalf("CONT: %v", err)
				}
				continue
			}
			return strings.TrimSuffix(line, "\n")
		}
	}
	if got := auth(1, f.signer.sign(t, userClaims(testMailbox))); !strings.HasPrefix(got, "OK\t1\tuser="+testMailbox) {
		t.Fatalf("got %q, want OK for %s", got, testMailbox)
	}
	if got := auth(2, f.signer.sign(t, userClaims("sales@contoso.com"))); !strings.HasPrefix(got, "FAIL\t2") {
		t.Fatalf("got %q, want FAIL", got)
	}
}
