package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

func checkName(name string) error {
	if strings.IndexFunc(name, isSpaceOrControl) >= 0 {
		return fmt.Errorf("%q contains white space or control characters", name)
	}
	return nil
}

func isSpaceOrControl(r rune) bool { return r <= ' ' || r == 0x7f }

func checkTenant(tenant string) error {
	switch tenant {
	case "common", "organizations", "consumers":
		return fmt.Errorf("%q is not a tenant: broker signs in to one directory, so name its domain (contoso.onmicrosoft.com) or tenant id", tenant)
	}
	if isGUID(tenant) || checkDomain(tenant) == nil {
		return nil
	}
	return fmt.Errorf("%q is neither a domain nor a tenant id", tenant)
}

// isGUID accepts the 8-4-4-4-12 hexadecimal form Entra shows.
func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range []byte(s) {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// checkDomain accepts lower-case ASCII names with at least two labels;
// internationalised domains must be written in their xn-- form.
func checkDomain(domain string) error {
	if len(domain) > 253 {
		return fmt.Errorf("domain %q is too long", domain)
	}
	labels := strings.Split(domain, ".")
	if len(labels) < 2 {
		return fmt.Errorf("domain %q has no dot", domain)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q is not a valid domain", domain)
		}
		for _, c := range []byte(l) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not a valid domain", domain)
			}
		}
	}
	return nil
}

// checkMailbox accepts the plain local@domain form; display names, quoted
// local parts and comments are not mailbox names.
func checkMailbox(mailbox string) error {
	local, domain, ok := strings.Cut(mailbox, "@")
	if !ok || local == "" || strings.Contains(domain, "@") {
		return fmt.Errorf("%q is not an address like user@example.com", mailbox)
	}
	if len(local) > 64 || strings.ContainsAny(local, `<>()[]\,;:"`) || strings.IndexFunc(local, isSpaceOrControl) >= 0 {
		return fmt.Errorf("%q is not an address like user@example.com", mailbox)
	}
	if err := checkDomain(domain); err != nil {
		return fmt.Errorf("%q is not an address like user@example.com: %v", mailbox, err)
	}
	return nil
}

func checkLogin(login string) error {
	if strings.IndexFunc(login, isSpaceOrControl) >= 0 || strings.ContainsRune(login, '"') {
		return fmt.Errorf("%q contains white space, control characters or quotes", login)
	}
	return nil
}

// checkAuthority returns the identity platform base URL without a trailing
// slash. Plain http is allowed for loopback hosts only, for test servers.
func checkAuthority(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("%q is not a URL like https://login.microsoftonline.com", s)
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		return "", fmt.Errorf("%q must use https (http is allowed for loopback hosts only)", s)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("%q must be a scheme and host only: the tenant and endpoint paths are added", s)
	}
	return u.Scheme + "://" + u.Host, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// checkHostPort requires a numeric port. A listen address may have an empty
// host (all addresses) and port 0 (any free port, for tests).
func checkHostPort(addr string, listen bool) (host string, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return "", fmt.Errorf("%q: %s", addr, ae.Err)
		}
		return "", err
	}
	if host == "" && !listen {
		return "", fmt.Errorf("%q has no host", addr)
	}
	if strings.IndexFunc(host, isSpaceOrControl) >= 0 {
		return "", fmt.Errorf("%q has white space in its host", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && !listen) {
		return "", fmt.Errorf("%q: port %q is not a port number", addr, port)
	}
	return host, nil
}
