package main

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

// authCodeFlow is the authorization code part of a sign-in.
type authCodeFlow interface {
	AuthCodeRequest(redirectURI string) *broker.AuthRequest
	// CheckRedirect finds mistakes in an address before it is redeemed.
	CheckRedirect(req *broker.AuthRequest, redirected string) error
	Redeem(ctx context.Context, req *broker.AuthRequest, redirected string) (*broker.Credentials, error)
}

// signInFlow is a *broker.SignIn as an authCodeFlow.
type signInFlow struct{ *broker.SignIn }

func (signInFlow) CheckRedirect(req *broker.AuthRequest, redirected string) error {
	return req.CheckRedirect(redirected)
}

// maxPasteTries is how many addresses the administrator may paste.
const maxPasteTries = 3

// loginPaste prints the authorize URL and reads back the address the
// browser ended on, which may be pasted again after a mistake.
func loginPaste(ctx context.Context, flow authCodeFlow, acct *config.Account, tio *loginIO) (*broker.Credentials, error) {
	req := flow.AuthCodeRequest(acct.App.RedirectURI)
	fmt.Fprintf(tio.out, `To sign in %s, open this address in a browser on any machine:

    %s

and sign in as %s. The browser then ends on a page that fails to load
(%s/?code=...); that is expected. Copy that whole address from the
address bar and paste it here.

`, describeAccount(acct), req.URL, acct.LoginUser, strings.TrimSuffix(req.RedirectURI, "/"))
	for tries := 1; ; {
		fmt.Fprint(tio.err, "Address: ")
		line, err := tio.in.next(ctx)
		if err != nil {
			if errors.Is(err, errInputEnded) {
				return nil, errors.New("standard input ended before the address was pasted")
			}
			return nil, err
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if err := flow.CheckRedirect(req, line); err != nil {
			if tries >= maxPasteTries {
				return nil, err
			}
			fmt.Fprintf(tio.err, "%v\nPaste it again (%d more tries), or press Ctrl-C.\n", err, maxPasteTries-tries)
			tries++
			continue
		}
		return flow.Redeem(ctx, req, line)
	}
}

// loopbackRedirect is the redirect URI of a listener on port: the app's
// loopback redirect URI (Entra ignores its port) with the port. The path is
// kept exactly as registered: Entra compares it, and http://localhost has
// none.
func loopbackRedirect(appRedirect string, port int) (string, error) {
	u, err := url.Parse(appRedirect)
	if err != nil || u.Scheme != "http" || (u.Hostname() != "localhost" && u.Hostname() != "127.0.0.1") {
		return "", fmt.Errorf("loopback mode needs the app's redirect_uri to be http://localhost (registered as a Mobile and desktop or Web redirect URI), not %q: use -paste", appRedirect)
	}
	return "http://" + net.JoinHostPort(u.Hostname(), strconv.Itoa(port)) + u.Path, nil
}

var loopbackPage = template.Must(template.New("").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>broker login</title></head><body>
{{if .}}<h1>Sign-in failed</h1><p>{{.}}</p>{{else}}<h1>Signed in</h1><p>You can close this window.</p>{{end}}
</body></html>
`))

type signInResult struct {
	creds *broker.Credentials
	err   error
}

// loginLoopback receives the browser on a local port: 127.0.0.1 and, when
// it can, [::1], since "localhost" may resolve to either.
func loginLoopback(ctx context.Context, flow authCodeFlow, acct *config.Account, port int, openBrowser bool, tio *loginIO) (*broker.Credentials, error) {
	if _, err := loopbackRedirect(acct.App.RedirectURI, port); err != nil {
		return nil, err
	}
	l4, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("loopback listener: %w", err)
	}
	port = l4.Addr().(*net.TCPAddr).Port
	listeners := []net.Listener{l4}
	if l6, err := net.Listen("tcp", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		listeners = append(listeners, l6)
	}
	redirect, _ := loopbackRedirect(acct.App.RedirectURI, port)
	req := flow.AuthCodeRequest(redirect)
	u, _ := url.Parse(redirect)

	ctx, cancel := context.WithTimeout(ctx, signInTimeout)
	defer cancel()
	results := make(chan signInResult, 1)
	var once sync.Once
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		// A browser asks for "/" where the redirect URI has no path.
		if strings.TrimSuffix(r.URL.Path, "/") != strings.TrimSuffix(u.Path, "/") || (!q.Has("code") && !q.Has("error")) {
			http.NotFound(w, r)
			return
		}
		handled := false
		once.Do(func() {
			handled = true
			res := signInResult{err: flow.CheckRedirect(req, "http://"+u.Host+r.RequestURI)}
			if res.err == nil {
				res.creds, res.err = flow.Redeem(ctx, req, "http://"+u.Host+r.RequestURI)
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			msg := ""
			if res.err != nil {
				msg = res.err.Error()
			}
			loopbackPage.Execute(w, msg)
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
			results <- res
		})
		if !handled {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			loopbackPage.Execute(w, "This sign-in is over; see the terminal where broker login runs.")
		}
	})
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	for _, l := range listeners {
		go srv.Serve(l)
	}
	defer func() {
		// Let the browser have its page, briefly.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}()

	fmt.Fprintf(tio.out, `To sign in %s, open this address in a browser on this machine:

    %s

and sign in as %s. broker waits for the browser on %s
for up to %s (Ctrl-C cancels).

`, describeAccount(acct), req.URL, acct.LoginUser, redirect, signInTimeout)
	if openBrowser {
		startBrowser(req.URL)
	}
	select {
	case res := <-results:
		return res.creds, res.err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("no browser came back to %s within %s; run broker login again (or use -paste)", redirect, signInTimeout)
		}
		return nil, ctx.Err()
	}
}

// startBrowser tries xdg-open; the administrator has the printed address
// when it fails.
func startBrowser(url string) {
	cmd := exec.Command("xdg-open", url)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if cmd.Start() == nil {
		go cmd.Wait()
	}
}
