package main

// Reload (SIGHUP, `systemctl reload broker`, `broker reload`) re-reads the
// configuration and applies it without a restart, or rejects it whole.

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/mailbroker/broker/config"
)

// staging collects the listeners of a daemon that a reload builds: its
// protocol servers are made as at start-up, but bind records what they
// want instead of binding it.
type staging struct {
	wants []wantedListener
}

type wantedListener struct {
	key   listenerKey
	tls   *tls.Config
	serve func(net.Listener) error
}

// errStopping refuses a reload once the daemon drains.
var errStopping = errors.New("broker is shutting down")

// reload applies the configuration file again. It returns a summary of
// the changes, or why nothing changed. systemd is told RELOADING=1 first
// and READY=1 after, whatever the outcome: the old configuration serves
// on after a failure.
func (d *daemon) reload() (string, error) {
	d.live.reloadMu.Lock()
	defer d.live.reloadMu.Unlock()
	if d.live.stopping {
		return "", errStopping
	}
	start := time.Now()
	notifySystemd(fmt.Sprintf("RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=%d", monotonicUsec()))
	d.log.Info("reloading the configuration", "config", d.cfg.Path)
	summary, err := d.applyReload()
	notifySystemd("READY=1\nSTATUS=" + d.statusLine())
	if err != nil {
		d.log.Error("reload failed; the running configuration stays in force", "config", d.cfg.Path, "err", err)
		return "", err
	}
	d.log.Info("configuration reloaded", "changes", summary, "duration", time.Since(start).Round(time.Millisecond))
	d.status.poke()
	return summary, nil
}

// applyReload reads and checks the new configuration, builds its protocol
// servers, binds its new listeners and reconciles the broker's accounts;
// only then does it switch, which cannot fail. Sessions in flight keep
// their server and upstream: the new settings apply to new sessions.
func (d *daemon) applyReload() (string, error) {
	old := d.cfg
	if old.Path == "" {
		return "", errors.New("the daemon was not started from a configuration file")
	}
	cfg, err := config.Load(old.Path)
	if err != nil {
		return "", err
	}
	switch {
	case cfg.StateDir != old.StateDir:
		return "", fmt.Errorf("state_dir changed from %s to %s: restart broker to move its state", old.StateDir, cfg.StateDir)
	case controlSocketPath(cfg) != controlSocketPath(old):
		return "", fmt.Errorf("control_socket changed from %s to %s: restart broker to move it", controlSocketPath(old), controlSocketPath(cfg))
	}
	for _, w := range cfg.Warnings {
		d.log.Warn("config: " + w)
	}
	if cfg.Metrics.Listen != old.Metrics.Listen {
		d.log.Warn("metrics.listen changed; the metrics endpoint moves at the next restart", "listen", old.Metrics.Listen, "new", cfg.Metrics.Listen)
	}

	// The new protocol servers, as start-up builds them: TLS files read,
	// options checked. They serve nothing until the switch.
	nd := *d
	nd.cfg, nd.imap, nd.smtp, nd.pop3, nd.listeners = cfg, nil, nil, nil, nil
	nd.staging = &staging{}
	if err := nd.setupProxies(cfg); err != nil {
		nd.closeServers()
		return "", err
	}

	d.live.mu.Lock()
	current := matchListeners(d.live.bound, nd.staging.wants)
	d.live.mu.Unlock()
	opened := map[listenerKey]*boundListener{}
	abort := func(err error) (string, error) {
		for _, bl := range opened {
			bl.close()
		}
		nd.closeServers()
		return "", err
	}
	for _, w := range nd.staging.wants {
		if current[w.key] != nil || opened[w.key] != nil {
			continue
		}
		bl, err := d.openListener(w.key, w.tls)
		if err != nil {
			return abort(err)
		}
		opened[w.key] = bl
	}
	res, err := d.broker.Reload(cfg)
	if err != nil {
		return abort(err)
	}

	// The switch.
	if d.logLevel != nil {
		d.logLevel.Set(cfg.LogLevel)
	}
	d.limiter.SetLimits(cfg.Limits.MaxConnections, cfg.Limits.MaxConnectionsPerSource)
	nd.applySlots()
	var added, removed []string
	d.live.mu.Lock()
	retired := d.serversLocked()
	d.live.retired = append(d.live.retired, retired...)
	d.imap, d.smtp, d.pop3 = nd.imap, nd.smtp, nd.pop3
	d.cfg = cfg
	var bound []*boundListener
	kept := map[*boundListener]bool{}
	for _, w := range nd.staging.wants {
		bl := current[w.key]
		if bl == nil {
			bl = opened[w.key]
			added = append(added, w.key.setting()+" "+w.key.addr)
			bl.serveWith(w.serve)
			go d.acceptLoop(bl)
			d.log.Info("listening", "proto", w.key.proto, "addr", bl.l.Addr().String())
		} else {
			bl.key = w.key
			bl.tlsConf.Store(w.tls)
			bl.serveWith(w.serve)
		}
		kept[bl] = true
		bound = append(bound, bl)
	}
	for _, bl := range d.live.bound {
		if !kept[bl] {
			bl.close()
			removed = append(removed, bl.key.setting()+" "+bl.key.addr)
			d.log.Info("stopped listening", "proto", bl.key.proto, "addr", bl.l.Addr().String())
		}
	}
	d.live.bound = bound
	d.live.mu.Unlock()
	// The new servers warm and keep their own upstream connections, to
	// the upstream the new configuration names.
	for _, s := range retired {
		s.Retire()
	}
	d.reapRetired()

	var b strings.Builder
	fmt.Fprintf(&b, "accounts: %d added, %d removed, %d kept", len(res.Added), len(res.Removed), res.Kept)
	for _, a := range res.Added {
		b.WriteString("; added " + a)
	}
	for _, a := range res.Removed {
		b.WriteString("; removed " + a + " (its app passwords are kept, unusable until it is configured again)")
	}
	if res.Retried > 0 {
		fmt.Fprintf(&b, "; %d failing sign-in(s) retried", res.Retried)
	}
	for _, l := range added {
		b.WriteString("; now listening on " + l)
	}
	for _, l := range removed {
		b.WriteString("; stopped listening on " + l)
	}
	return b.String(), nil
}

// matchListeners maps each wanted listener to the bound one that serves
// it: the same setting and address, else one bound to the address the
// wanted one names (a port 0 listener, or a host name, once written as the
// address it got).
func matchListeners(bound []*boundListener, wants []wantedListener) map[listenerKey]*boundListener {
	m := map[listenerKey]*boundListener{}
	taken := map[*boundListener]bool{}
	for _, bl := range bound {
		m[bl.key] = bl
		taken[bl] = true
	}
	for k, bl := range m {
		if !slices.ContainsFunc(wants, func(w wantedListener) bool { return w.key == k }) {
			delete(m, k)
			taken[bl] = false
		}
	}
	for _, w := range wants {
		if m[w.key] != nil {
			continue
		}
		want, err := net.ResolveTCPAddr("tcp", w.key.addr)
		if err != nil || want.Port == 0 {
			continue
		}
		for _, bl := range bound {
			got, ok := bl.l.Addr().(*net.TCPAddr)
			if !taken[bl] && ok && bl.key.proto == w.key.proto && bl.key.tls == w.key.tls && sameTCPAddr(got, want) {
				m[w.key] = bl
				taken[bl] = true
				break
			}
		}
	}
	return m
}

// acceptLoop runs bl's accept loop; a failure ends the daemon, as at
// start-up.
func (d *daemon) acceptLoop(bl *boundListener) {
	if err := bl.acceptLoop(d); err != nil {
		select {
		case d.live.errc <- err:
		default:
		}
	}
}

// closeServers closes the servers of a reload that failed: they never
// served.
func (d *daemon) closeServers() {
	for _, s := range d.serversLocked() {
		s.Close()
	}
}

// reapRetired forgets the servers that a reload replaced once their last
// session ended.
func (d *daemon) reapRetired() {
	d.live.mu.Lock()
	defer d.live.mu.Unlock()
	d.live.retired = slices.DeleteFunc(d.live.retired, func(s protoServer) bool {
		if s.Sessions() > 0 {
			return false
		}
		s.Close()
		return true
	})
}

// reloadCmd is `broker reload`: the running daemon re-reads its
// configuration and says what changed, or why it kept the old one.
func reloadCmd(args []string, stdout, stderr io.Writer) error {
	fs, configPath := newCommand("reload", "", stderr)
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return errUsage
	}
	// The daemon reads the file and says what is wrong with it; only its
	// socket is needed here, which a broken file may still name.
	socket, loadErr := reloadSocket(*configPath)
	c, err := dialControl(socket)
	if err != nil {
		if loadErr != nil {
			return loadErr
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	resp, err := c.do(ctx, &controlRequest{Op: "reload"})
	if err != nil {
		return fmt.Errorf("reload failed, the running configuration stays in force: %w", err)
	}
	fmt.Fprintln(stdout, "reloaded: "+resp.Reload)
	return nil
}

// reloadSocket finds the control socket of the daemon that uses the
// configuration at path, even when the file no longer validates: from its
// state_dir and control_socket keys alone, else the defaults. loadErr is
// the file's problem, if any.
func reloadSocket(path string) (socket string, loadErr error) {
	cfg, loadErr := config.Load(path)
	if loadErr == nil {
		return controlSocketPath(cfg), nil
	}
	var keys struct {
		StateDir      string `toml:"state_dir"`
		ControlSocket string `toml:"control_socket"`
	}
	if _, err := toml.DecodeFile(path, &keys); err != nil {
		// Not even TOML: look for the two keys line by line.
		keys.StateDir, keys.ControlSocket = "", ""
		if data, err := os.ReadFile(path); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				var v struct {
					StateDir      string `toml:"state_dir"`
					ControlSocket string `toml:"control_socket"`
				}
				if _, err := toml.Decode(line, &v); err == nil {
					keys.StateDir = cmp.Or(v.StateDir, keys.StateDir)
					keys.ControlSocket = cmp.Or(v.ControlSocket, keys.ControlSocket)
				}
			}
		}
	}
	abs := func(p string) string {
		if p != "" && !filepath.IsAbs(p) {
			return filepath.Join(filepath.Dir(path), p)
		}
		return p
	}
	if keys.ControlSocket != "" {
		return abs(keys.ControlSocket), loadErr
	}
	dir := abs(keys.StateDir)
	if dir == "" {
		dir = config.DefaultStateDir
	}
	return config.DefaultControlSocketFor(dir), loadErr
}
