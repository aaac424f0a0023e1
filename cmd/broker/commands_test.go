package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/test/m365sim"
)

const (
	cmdTenant   = "contoso.onmicrosoft.com"
	cmdClientID = "00000000-0000-4000-8000-0000000000c1"
	cmdUser     = "presence@contoso.com"
	cmdPassword = "correct horse"
)

// cmdEnv is a simulated identity platform and a configuration with one
// password-flow account, in a state directory short enough for the control
// socket's path.
func cmdEnv(t *testing.T) (cfgPath string, entra *m365sim.Entra) {
	t.Helper()
	entra, err := m365sim.NewEntra(m365sim.EntraOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(entra.Close)
	entra.AddTenant(cmdTenant)
	entra.AddUser(cmdTenant, cmdUser, cmdPassword)
	entra.AddApp(m365sim.App{Tenant: cmdTenant, ClientID: cmdClientID, PublicClientFlows: true})
	dir, err := os.MkdirTemp("", "cmd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfgPath = filepath.Join(dir, "broker.toml")
	cfg := fmt.Sprintf(`state_dir = %q

[[app]]
name = "presence"
tenant = %q
client_id = %q
authority = %q

[[account]]
mailbox = %q
app = "presence"
flow = "password"
`, filepath.Join(dir, "state"), cmdTenant, cmdClientID, entra.URL(), cmdUser)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, entra
}

// runCmd runs one command as main does and returns its exit code and
// output.
func runCmd(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errw bytes.Buffer
	if args[0] == "login" {
		// run hands login the process's standard input; tests give their own.
		err := loginCmd(args[1:], strings.NewReader(stdin), &out, &errw)
		code = 0
		if err != nil {
			fmt.Fprintln(&errw, "broker:", err)
			code = 1
		}
		return code, out.String(), errw.String()
	}
	code = run(args, &out, &errw)
	return code, out.String(), errw.String()
}

// The account commands work the same way without a daemon (the CLI opens
// the store) and with one (through the control socket).
func TestAccountCommands(t *testing.T) {
	cfgPath, _ := cmdEnv(t)
	exercise := func(t *testing.T) {
		code, _, stderr := runCmd(t, "", "status", "-config", cfgPath)
		if code != exitStatusCritical || stderr != "" {
			t.Fatalf("status before login: exit %d, %q; want %d", code, stderr, exitStatusCritical)
		}
		code, stdout, stderr := runCmd(t, "wrong\n", "login", "-config", cfgPath, cmdUser)
		if code == 0 || !strings.Contains(stderr, "50126") && !strings.Contains(strings.ToLower(stderr), "password") {
			t.Fatalf("login with a wrong password: exit %d\n%s%s", code, stdout, stderr)
		}
		code, stdout, stderr = runCmd(t, cmdPassword+"\n", "login", "-config", cfgPath, cmdUser)
		if code != 0 || !strings.Contains(stdout, "Signed in as "+cmdUser+"; accounts now served: "+cmdUser) || !strings.Contains(stderr, "retiring") {
			t.Fatalf("login: exit %d\n%s%s", code, stdout, stderr)
		}
		code, stdout, _ = runCmd(t, "", "status", "-config", cfgPath, "-json", cmdUser)
		var statuses []broker.Status
		if err := json.Unmarshal([]byte(stdout), &statuses); code != 0 || err != nil || len(statuses) != 1 || statuses[0].State != broker.StateOK {
			t.Fatalf("status after login: exit %d, %v\n%s", code, err, stdout)
		}
		if c := statuses[0].Credentials; len(c) != 1 || c[0].Kind != broker.CredentialPassword {
			t.Fatalf("status: credentials %+v, want the sealed password", c)
		}
		code, stdout, stderr = runCmd(t, "", "token", "-config", cfgPath, "-scope", "graph", cmdUser)
		if code != 0 || strings.Count(stdout, "\n") != 1 || !strings.HasPrefix(stdout, "eyJ") || !strings.Contains(stderr, "graph.microsoft.com") {
			t.Fatalf("token: exit %d\n%s%s", code, stdout, stderr)
		}
		code, stdout, _ = runCmd(t, "", "logout", "-config", cfgPath, cmdUser)
		if code != 0 || !strings.Contains(stdout, cmdUser) {
			t.Fatalf("logout: exit %d\n%s", code, stdout)
		}
		code, stdout, _ = runCmd(t, "", "status", "-config", cfgPath, cmdUser)
		if code != exitStatusCritical || !strings.Contains(stdout, "needs-login") {
			t.Fatalf("status after logout: exit %d\n%s", code, stdout)
		}
		if code, _, stderr := runCmd(t, "", "status", "-config", cfgPath, "nobody@contoso.com"); code != 1 || !strings.Contains(stderr, "not a configured account") {
			t.Fatalf("status of an unknown mailbox: exit %d, %q", code, stderr)
		}
	}
	t.Run("without daemon", exercise)
	t.Run("with daemon", func(t *testing.T) {
		cfg, err := config.Load(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		d, err := newDaemon(cfg, slog.New(slog.NewTextHandler(&logs, nil)), broker.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.run(ctx) }()
		defer func() {
			cancel()
			select {
			case <-done:
			case <-time.After(config.DefaultDrainTimeout + 5*time.Second):
				t.Error("the daemon did not stop")
			}
		}()
		exercise(t)
		for _, op := range []string{"op=login", "op=status", "op=token", "op=logout"} {
			if !strings.Contains(logs.String(), op) {
				t.Errorf("the daemon's log lacks %s", op)
			}
		}
		if strings.Contains(logs.String(), cmdPassword) {
			t.Errorf("the daemon's log holds the password")
		}
	})
}
