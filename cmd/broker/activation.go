package main

// Socket activation (sd_listen_fds(3)): with broker.socket, systemd holds
// the listening sockets and passes them to each broker it starts, so that
// connections made while broker restarts wait in the socket's queue rather
// than being refused.

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// listenFDsStart is the first file descriptor systemd passes.
const listenFDsStart = 3

// activatedSocket is one listening socket systemd passed.
type activatedSocket struct {
	name string // FileDescriptorName=, or the socket unit's name
	l    net.Listener
	used bool
}

// activation holds the sockets systemd passed until the configured
// listeners take them.
type activation struct {
	log     *slog.Logger
	sockets []*activatedSocket
}

// takeActivation reads LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES and unsets
// them, so that nothing broker starts inherits them. Sockets passed to
// another process (LISTEN_PID) are not ours; a descriptor that is not a
// listening socket is logged and closed.
func takeActivation(log *slog.Logger) *activation {
	pid, nfds, names := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	a := &activation{log: log}
	if nfds == "" {
		return a
	}
	if p, err := strconv.Atoi(pid); err != nil || p != os.Getpid() {
		log.Warn("ignoring sockets passed by systemd to another process", "listen_pid", pid)
		return a
	}
	n, err := strconv.Atoi(nfds)
	if err != nil || n < 0 {
		log.Warn("ignoring LISTEN_FDS", "listen_fds", nfds)
		return a
	}
	nameList := strings.Split(names, ":")
	for i := range n {
		fd := listenFDsStart + i
		name := ""
		if i < len(nameList) {
			name = nameList[i]
		}
		syscall.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "listen-fd-"+name)
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			log.Warn("systemd passed a descriptor that is no listening socket; ignoring it", "fd", fd, "name", name, "err", err)
			continue
		}
		if _, ok := l.Addr().(*net.TCPAddr); !ok {
			log.Warn("systemd passed a socket that is not TCP; closing it", "fd", fd, "name", name, "addr", l.Addr().String())
			l.Close()
			continue
		}
		log.Info("socket passed by systemd", "name", name, "addr", l.Addr().String())
		a.sockets = append(a.sockets, &activatedSocket{name: name, l: l})
	}
	return a
}

// take returns the passed socket for key and marks it used, or nil: the
// socket bound to key's address, else one named after the listener
// ("imap", "smtp", "pop3"; "imaps", "smtps", "pop3s" for implicit TLS).
func (a *activation) take(key listenerKey) net.Listener {
	if a == nil {
		return nil
	}
	if want, err := net.ResolveTCPAddr("tcp", key.addr); err == nil && want.Port != 0 {
		for _, s := range a.sockets {
			if !s.used && sameTCPAddr(s.l.Addr().(*net.TCPAddr), want) {
				s.used = true
				return s.l
			}
		}
	}
	name := key.proto
	if key.tls {
		name += "s"
	}
	for _, s := range a.sockets {
		if !s.used && s.name == name {
			s.used = true
			a.log.Info("using the socket systemd passed by its name, not its address", "name", name,
				"addr", s.l.Addr().String(), key.setting(), key.addr)
			return s.l
		}
	}
	return nil
}

// closeUnused closes the passed sockets no listener took.
func (a *activation) closeUnused() {
	if a == nil {
		return
	}
	for _, s := range a.sockets {
		if !s.used {
			a.log.Warn("systemd passed a socket the configuration does not listen on; closing it (add its address to a listen setting, or remove it from broker.socket)",
				"name", s.name, "addr", s.l.Addr().String())
			s.l.Close()
			s.used = true
		}
	}
}

// sameTCPAddr compares a bound address with a configured one; the
// unspecified addresses of IPv4 and IPv6 count as one.
func sameTCPAddr(got, want *net.TCPAddr) bool {
	if got.Port != want.Port {
		return false
	}
	if got.IP.IsUnspecified() && (want.IP == nil || want.IP.IsUnspecified()) {
		return true
	}
	return got.IP.Equal(want.IP)
}
