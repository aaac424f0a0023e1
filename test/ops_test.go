package test

// Operating broker: exit codes, version, backup, the control socket's
// location, make install and the Debian package, each through the built
// binary or the Makefile as an operator uses them.

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailbroker/broker/config"
	"github.com/mailbroker/broker/store"
)

// Exit codes of the README's table.
const (
	exitTempFail = 75
	exitConfig   = 78
)

func TestConfigErrorExits78(t *testing.T) {
	dir := t.TempDir()
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	tests := []struct {
		name, config string
		want         int
		reason       string
	}{
		{"unknown key", "state_dir = \"" + dir + "/s1\"\nlog_levl = \"debug\"\n", exitConfig, "log_levl"},
		{"bad log_level", "state_dir = \"" + dir + "/s2\"\nlog_level = \"loud\"\n", exitConfig, "log_level"},
		{"secret file missing", "state_dir = \"" + dir + "/s3\"\n[[app]]\nname = \"a\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"" + clientID + "\"\nclient_secret_file = \"/nonexistent/secret\"\n",
			exitConfig, "client_secret_file"},
		{"TLS key unreadable", "state_dir = \"" + dir + "/s4\"\n[imap]\ntls_cert_file = \"/nonexistent/tls.crt\"\ntls_key_file = \"/nonexistent/tls.key\"\n",
			exitConfig, "tls_cert_file"},
		{"listen address not on this host", "state_dir = \"" + dir + "/s5\"\n[imap]\nlisten = [\"192.0.2.1:1143\"]\n", exitConfig, "imap.listen"},
		{"listen address in use", "state_dir = \"" + dir + "/s6\"\n[imap]\nlisten = [\"" + held.Addr().String() + "\"]\n", exitTempFail, "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, "broker.toml", []byte(tt.config))
			_, stderr, err := runBroker("serve", "-config", path)
			if got := exitCode(err); got != tt.want {
				t.Fatalf("exit %d, want %d; stderr:\n%s", got, tt.want, stderr)
			}
			if !strings.Contains(stderr, tt.reason) {
				t.Fatalf("stderr does not say %q:\n%s", tt.reason, stderr)
			}
		})
	}
	t.Run("config file missing", func(t *testing.T) {
		path := filepath.Join(dir, "none.toml")
		_, stderr, err := runBroker("serve", "-config", path)
		if got := exitCode(err); got != exitConfig || !strings.Contains(stderr, path+": no such file or directory") {
			t.Fatalf("exit %d, stderr %q; want %d naming the file", got, stderr, exitConfig)
		}
	})
	t.Run("bad -log-level", func(t *testing.T) {
		if _, stderr, err := runBroker("serve", "-log-level", "loud"); exitCode(err) != 2 {
			t.Fatalf("exit %d, want 2 (usage); stderr %q", exitCode(err), stderr)
		}
	})
}

func TestDatabaseInUseExits75(t *testing.T) {
	env := newSimEnv(t)
	_, stderr, err := runBroker("serve", "-config", env.Daemon.config)
	if got := exitCode(err); got != exitTempFail || !strings.Contains(stderr, "in use by another broker process") {
		t.Fatalf("a second daemon on the same state_dir: exit %d, want %d; stderr %q", got, exitTempFail, stderr)
	}
}

func TestVersion(t *testing.T) {
	// The test binary is a plain go build: the version comes from the
	// build information (the checkout's commit).
	out, stderr, err := runBroker("version")
	if err != nil {
		t.Fatalf("broker version: %v\n%s", err, stderr)
	}
	if !regexp.MustCompile(`^broker \S+ \(go1\.\d+\S* linux/\w+\)\n$`).MatchString(out) || strings.Contains(out, "unknown") {
		t.Fatalf("broker version printed %q", out)
	}
	// The Makefile's stamp wins.
	bin := filepath.Join(t.TempDir(), "broker")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version=v9.8.7-3-gabcdef0", "-o", bin, "../cmd/broker")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out2, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out2), "broker v9.8.7-3-gabcdef0 (go") {
		t.Fatalf("stamped broker version printed %q, %v", out2, err)
	}
}

// checkBackup opens a backup as a store and finds the account and the app
// password in it.
func checkBackup(t *testing.T, path, passID string) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("backup mode %v, want 0600", info.Mode().Perm())
	}
	db, err := store.Open(path)
	if err != nil {
		t.Fatalf("the backup does not open as a store: %v", err)
	}
	defer db.Close()
	ctx := context.Background()
	accounts, err := db.Accounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(accounts, func(a *store.Account) bool { return a.Mailbox == mailbox && len(a.Token) > 0 }) {
		t.Errorf("the backup's accounts %v lack %s with its sealed token", accounts, mailbox)
	}
	pws, err := db.AppPasswords(ctx, mailbox)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(pws, func(p *store.AppPassword) bool { return p.ID == passID && p.Hash != "" }) {
		t.Errorf("the backup's app passwords %v lack %s", pws, passID)
	}
}

func TestBackup(t *testing.T) {
	env := newSimEnv(t)
	// A login, so that the account has a token on record.
	c := dialProxy(t, env.Daemon.IMAPAddr)
	if err := c.Login(mailbox, env.Password).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	c.Close()
	dir := t.TempDir()

	t.Run("through the daemon", func(t *testing.T) {
		path := filepath.Join(dir, "live.db")
		// An older backup in the way is replaced whole.
		writeFile(t, dir, "live.db", []byte("old backup"))
		out := env.Daemon.cli("backup", path)
		if !strings.Contains(out, "made by the running daemon") || !strings.Contains(out, "sealing key is not in the backup") {
			t.Errorf("backup printed %q", out)
		}
		checkBackup(t, path, env.PassID)
		if !strings.Contains(env.Daemon.waitLog("op=backup"), "control request") {
			t.Error("the daemon did not log the backup request")
		}
		// While the daemon serves, on.
		c := dialProxy(t, env.Daemon.IMAPAddr)
		if err := c.Login(mailbox, env.Password).Wait(); err != nil {
			t.Fatalf("LOGIN after the backup: %v", err)
		}
	})

	t.Run("without a daemon", func(t *testing.T) {
		env.Daemon.stop()
		path := filepath.Join(dir, "offline.db")
		out := env.Daemon.cli("backup", path)
		if !strings.Contains(out, "no daemon running") {
			t.Errorf("backup printed %q", out)
		}
		checkBackup(t, path, env.PassID)

		// To standard output, the report on standard error.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, brokerBin, "backup", "-config", env.Daemon.config, "-")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("backup -: %v\n%s", err, stderr.String())
		}
		piped := writeFile(t, dir, "piped.db", stdout.Bytes())
		checkBackup(t, piped, env.PassID)
		if !strings.Contains(stderr.String(), "standard output") {
			t.Errorf("backup - reported %q on stderr", stderr.String())
		}
	})

	t.Run("no database", func(t *testing.T) {
		cfg := writeFile(t, dir, "empty.toml", []byte("state_dir = \""+filepath.Join(dir, "nothing")+"\"\n"))
		_, stderr, err := runBroker("backup", "-config", cfg, filepath.Join(dir, "x.db"))
		if exitCode(err) != 1 || !strings.Contains(stderr, "nothing to back up") {
			t.Fatalf("exit %d, stderr %q; want 1, nothing to back up", exitCode(err), stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "nothing", "broker.db")); err == nil {
			t.Error("backup made an empty database")
		}
		if _, err := os.Stat(filepath.Join(dir, "x.db")); err == nil {
			t.Error("a failed backup left a file")
		}
	})
}

// TestControlSocketFromConfig: a daemon listening where control_socket
// says, with mode 0600, is found there by the CLI.
func TestControlSocketFromConfig(t *testing.T) {
	env := newSimEnv(t)
	cfgData, err := os.ReadFile(env.Daemon.config)
	if err != nil {
		t.Fatal(err)
	}
	env.Daemon.stop()
	// Short: socket paths are limited to 107 bytes.
	run, err := os.MkdirTemp("", "run")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	sock := filepath.Join(run, "broker", "control.sock")
	dir := t.TempDir()
	d := startDaemon(t, dir, "control_socket = \""+sock+"\"\n"+string(cfgData))
	info, err := os.Stat(sock)
	if err != nil {
		t.Fatalf("no socket at control_socket: %v\n%s", err, d.Log())
	}
	if info.Mode().Type() != os.ModeSocket || info.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %v, want a socket with mode 0600", info.Mode())
	}
	// The daemon holds the database: the CLI succeeds only through it.
	if out := d.cli("app-password", "list", mailbox); !strings.Contains(out, env.PassID) {
		t.Fatalf("app-password list printed %q", out)
	}
	d.stop()
	if _, err := os.Stat(sock); err == nil {
		t.Error("the daemon left its socket behind")
	}
}

// TestExampleConfig: docs/broker.example.toml, which make install and the
// package install as /etc/broker/broker.toml, is valid once the files it
// names exist, and names the defaults the README gives.
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile("../docs/broker.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFile(t, dir, "contoso.secret", []byte("dummy-secret-value\n"))
	src := strings.ReplaceAll(string(data), "/etc/broker/", dir+"/")
	cfg, err := config.Parse([]byte(src), filepath.Join(dir, "broker.toml"))
	if err != nil {
		t.Fatalf("the example does not parse: %v", err)
	}
	if cfg.StateDir != config.DefaultStateDir || cfg.ControlSocket != config.DefaultControlSocket {
		t.Errorf("state_dir %q, control socket %q; want the defaults", cfg.StateDir, cfg.ControlSocket)
	}
	if cfg.IMAP == nil || !slices.Equal(cfg.IMAP.Listen, []string{"127.0.0.1:143"}) || cfg.SMTP == nil || !slices.Equal(cfg.SMTP.Listen, []string{"127.0.0.1:587"}) {
		t.Errorf("listeners: imap %+v, smtp %+v", cfg.IMAP, cfg.SMTP)
	}
	if len(cfg.Accounts) != 1 || cfg.Accounts[0].Flow != config.FlowClientCredentials || len(cfg.Apps) != 1 {
		t.Errorf("apps %v, accounts %v", cfg.Apps, cfg.Accounts)
	}
	// Every commented-out key line is valid too when uncommented, one at a
	// time, where it stands (after the files it names exist).
	for _, f := range []string{"tls.crt", "tls.key", "upstream-ca.pem", "app.crt", "app.key"} {
		writeFile(t, dir, f, nil)
	}
	keyLine := regexp.MustCompile(`^# ([a-z_]+) = `)
	lines := strings.Split(src, "\n")
	checked := 0
	for i, l := range lines {
		m := keyLine.FindStringSubmatch(l)
		if m == nil || strings.HasSuffix(m[1], "_file") || m[1] == "client_secret_expires" || m[1] == "login_user" || m[1] == "listen_tls" || m[1] == "allow_unauthenticated_as" {
			// Files (empty here), a secret's expiry and a second login
			// user need other settings changed with them; they are
			// covered by config's own tests.
			continue
		}
		trial := slices.Clone(lines)
		trial[i] = strings.TrimPrefix(l, "# ")
		// A key of a commented-out table goes with its table's header.
		for j := i - 1; j >= 0; j-- {
			if h := strings.TrimPrefix(lines[j], "# "); strings.HasPrefix(h, "[") {
				trial[j] = h
				break
			}
		}
		if _, err := config.Parse([]byte(strings.Join(trial, "\n")), filepath.Join(dir, "broker.toml")); err != nil {
			t.Errorf("line %d uncommented (%s): %v", i+1, trial[i], err)
		}
		checked++
	}
	if checked < 10 {
		t.Errorf("only %d commented settings checked", checked)
	}
}

// runMake runs a Makefile target of the repository.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", ".."}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dest := t.TempDir()
	runMake(t, "install", "DESTDIR="+dest)
	bin := filepath.Join(dest, "usr/local/bin/broker")
	unit := filepath.Join(dest, "etc/systemd/system/broker.service")
	socket := filepath.Join(dest, "etc/systemd/system/broker.socket")
	conf := filepath.Join(dest, "etc/broker/broker.toml")
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "broker ") {
		t.Fatalf("installed broker version: %q, %v", out, err)
	}
	unitData, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=/usr/local/bin/broker serve", "RestartPreventExitStatus=78", "RuntimeDirectory=broker"} {
		if !strings.Contains(string(unitData), want) {
			t.Errorf("the installed unit lacks %s", want)
		}
	}
	if info, err := os.Stat(socket); err != nil || info.Mode().Perm() != 0o644 {
		t.Errorf("installed socket unit: %v, %v; want mode 0644", info, err)
	}
	if info, err := os.Stat(conf); err != nil || info.Mode().Perm() != 0o640 {
		t.Fatalf("installed config: %v, %v; want mode 0640", info, err)
	}
	// A configuration in place is never overwritten.
	if err := os.WriteFile(conf, []byte("# mine\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if out := runMake(t, "install", "DESTDIR="+dest); !strings.Contains(out, "not overwritten") {
		t.Errorf("second install said:\n%s", out)
	}
	if data, _ := os.ReadFile(conf); string(data) != "# mine\n" {
		t.Fatalf("make install overwrote the configuration: %q", data)
	}
	// Nothing else: a binary, the units, a configuration.
	var files []string
	filepath.WalkDir(dest, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(p, dest))
		}
		return nil
	})
	slices.Sort(files)
	if want := []string{"/etc/broker/broker.toml", "/etc/systemd/system/broker.service", "/etc/systemd/system/broker.socket",
		"/usr/local/bin/broker"}; !slices.Equal(files, want) {
		t.Errorf("installed %v, want %v", files, want)
	}
	runMake(t, "uninstall", "DESTDIR="+dest)
	for _, p := range []string{bin, unit, socket} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("uninstall left %s", p)
		}
	}
	if _, err := os.Stat(conf); err != nil {
		t.Errorf("uninstall removed the configuration: %v", err)
	}
}

// TestDebianPackage builds the .deb and installs it on this machine, as CI
// (root on Debian) does: the unit, the user, the state directory, the
// conffile, a binary that runs; nothing started; removal keeps the state,
// purge deletes it. The machine is left as it was found, so the test
// refuses to run where broker is installed or its user exists.
func TestDebianPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("installing a package needs root")
	}
	for _, tool := range []string{"dpkg", "make", "adduser"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: not a Debian machine", tool)
		}
	}
	if exec.Command("dpkg-query", "-W", "broker").Run() == nil {
		t.Skip("a broker package is installed (or known to dpkg) on this machine: not touching it")
	}
	if exec.Command("getent", "passwd", "broker").Run() == nil {
		t.Skip("a broker user exists on this machine: not touching it")
	}
	for _, p := range []string{"/etc/broker", "/var/lib/broker", "/usr/bin/broker"} {
		if _, err := os.Lstat(p); err == nil {
			t.Skipf("%s exists on this machine: not touching it", p)
		}
	}

	out := runMake(t, "deb")
	m := regexp.MustCompile(`created package: (\S+\.deb)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("make deb named no package:\n%s", out)
	}
	deb := filepath.Join("..", m[1])
	if !regexp.MustCompile(`^broker_[0-9][A-Za-z0-9.+~]*_amd64\.deb$`).MatchString(filepath.Base(deb)) {
		t.Errorf("package file name %s, want broker_<version>_amd64.deb", filepath.Base(deb))
	}
	dpkg := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("dpkg", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	contents := dpkg("-c", deb)
	for _, want := range []string{"./usr/bin/broker", "./lib/systemd/system/broker.service", "./lib/systemd/system/broker.socket", "./etc/broker/broker.toml"} {
		if !strings.Contains(contents, want+"\n") {
			t.Errorf("the package lacks %s:\n%s", want, contents)
		}
	}
	if cf, err := exec.Command("dpkg-deb", "-f", deb, "Depends").Output(); err != nil || !strings.Contains(string(cf), "adduser") {
		t.Errorf("Depends: %q, %v", cf, err)
	}

	t.Cleanup(func() {
		// Whatever happened: purge, and the user that purge keeps.
		exec.Command("dpkg", "--purge", "broker").Run()
		exec.Command("deluser", "--system", "--quiet", "broker").Run()
		exec.Command("delgroup", "--system", "--quiet", "broker").Run()
	})
	dpkg("-i", deb)

	if _, err := os.Stat("/lib/systemd/system/broker.service"); err != nil {
		t.Errorf("unit: %v", err)
	}
	// The socket unit is there, and not enabled.
	if _, err := os.Stat("/lib/systemd/system/broker.socket"); err != nil {
		t.Errorf("socket unit: %v", err)
	}
	if _, err := os.Lstat("/etc/systemd/system/sockets.target.wants/broker.socket"); err == nil {
		t.Error("the package enabled broker.socket")
	}
	if out, err := exec.Command("getent", "passwd", "broker").Output(); err != nil || !strings.Contains(string(out), ":/var/lib/broker:/usr/sbin/nologin") {
		t.Errorf("user: %q, %v", out, err)
	}
	assertOwned(t, "/var/lib/broker", "broker", "broker", os.ModeDir|0o700)
	assertOwned(t, "/etc/broker", "root", "broker", os.ModeDir|0o750)
	assertOwned(t, "/etc/broker/broker.toml", "root", "broker", 0o640)
	if conffiles, err := os.ReadFile("/var/lib/dpkg/info/broker.conffiles"); err != nil || !strings.Contains(string(conffiles), "/etc/broker/broker.toml") {
		t.Errorf("conffiles: %q, %v", conffiles, err)
	}
	out2, err := exec.Command("/usr/bin/broker", "version").Output()
	if err != nil || !strings.HasPrefix(string(out2), "broker ") {
		t.Errorf("installed broker version: %q, %v", out2, err)
	}
	// Nothing runs, and the example configuration is refused until filled
	// in, with exit 78, which the unit does not restart.
	if exes, _ := filepath.Glob("/proc/[0-9]*/exe"); slices.ContainsFunc(exes, func(p string) bool {
		target, _ := os.Readlink(p)
		return target == "/usr/bin/broker"
	}) {
		t.Error("a broker process runs after the installation")
	}
	cmd := exec.Command("/usr/bin/broker", "serve")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); exitCode(err) != exitConfig || !strings.Contains(stderr.String(), "/etc/broker/contoso.secret") {
		t.Errorf("serve with the shipped example: exit %d, %q; want %d naming the missing secret file", exitCode(err), stderr.String(), exitConfig)
	}

	// An administrator's configuration survives a reinstallation.
	if err := os.WriteFile("/etc/broker/broker.toml", []byte("# configured\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	dpkg("-i", deb)
	if data, _ := os.ReadFile("/etc/broker/broker.toml"); string(data) != "# configured\n" {
		t.Errorf("reinstalling replaced the configuration: %q", data)
	}

	// remove keeps the state and the configuration; purge deletes them.
	if err := os.WriteFile("/var/lib/broker/broker.db", []byte("state"), 0o600); err != nil {
		t.Fatal(err)
	}
	dpkg("-r", "broker")
	if _, err := os.Stat("/usr/bin/broker"); err == nil {
		t.Error("dpkg -r left /usr/bin/broker")
	}
	for _, u := range []string{"/lib/systemd/system/broker.service", "/lib/systemd/system/broker.socket"} {
		if _, err := os.Stat(u); err == nil {
			t.Errorf("dpkg -r left %s", u)
		}
	}
	if _, err := os.Stat("/var/lib/broker/broker.db"); err != nil {
		t.Errorf("dpkg -r removed the state: %v", err)
	}
	dpkg("--purge", "broker")
	for _, p := range []string{"/var/lib/broker", "/etc/broker"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("purge left %s", p)
		}
	}
}

// assertOwned checks a file's owner, group and mode.
func assertOwned(t *testing.T, path, owner, group string, mode os.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	st := info.Sys().(*syscall.Stat_t)
	u, _ := user.LookupId(strconv.Itoa(int(st.Uid)))
	g, _ := user.LookupGroupId(strconv.Itoa(int(st.Gid)))
	if u == nil || g == nil || u.Username != owner || g.Name != group {
		t.Errorf("%s: owner uid %d gid %d, want %s:%s", path, st.Uid, st.Gid, owner, group)
	}
	if got := info.Mode() & (os.ModeDir | os.ModePerm); got != mode {
		t.Errorf("%s: mode %v, want %v", path, got, mode)
	}
}

// TestDebVersion: the package's version, from git describe, is one that
// dpkg accepts and orders as the commits are.
func TestDebVersion(t *testing.T) {
	for describe, want := range map[string]string{
		"v1.2.3":                  "1.2.3",
		"1.2.3":                   "1.2.3",
		"v1.2.3-dirty":            "1.2.3+dirty",
		"v1.2.3-4-gabc1234":       "1.2.3+4.gabc1234",
		"v1.2.3-4-gabc1234-dirty": "1.2.3+4.gabc1234.dirty",
		"abc1234":                 `0~git\d{14}.abc1234`,
		"3047184-dirty":           `0~git\d{14}.3047184.dirty`, // a hash of digits is no tag
	} {
		out, err := exec.Command("sh", "../docs/packaging/debversion", describe).Output()
		if err != nil {
			t.Fatalf("debversion %s: %v", describe, err)
		}
		if got := strings.TrimSpace(string(out)); !regexp.MustCompile(`^` + strings.ReplaceAll(want, "+", `\+`) + `$`).MatchString(got) {
			t.Errorf("debversion %s: %s, want %s", describe, got, want)
		}
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		return
	}
	// Ordering: untagged < the first tag < commits after it.
	for _, pair := range [][2]string{{"0~git20260101000000.abc1234", "0.1.0"}, {"1.2.3", "1.2.3+4.gabc1234"}, {"1.2.3+4.gabc1234", "1.2.4"}} {
		if err := exec.Command("dpkg", "--compare-versions", pair[0], "lt", pair[1]).Run(); err != nil {
			t.Errorf("dpkg does not order %s before %s", pair[0], pair[1])
		}
	}
}
