package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mailbroker/broker/proxy"
)

// graphError is an error answer of Microsoft Graph.
type graphError struct {
	Status    int
	Code      string // error.code, e.g. ErrorSendAsDenied
	Message   string
	RequestID string
	op        string
}

func (e *graphError) Error() string {
	msg := fmt.Sprintf("%s: Microsoft Graph answered %d %s", e.op, e.Status, e.Code)
	if e.Message != "" {
		msg += ": " + oneLine(e.Message, 300)
	}
	if e.RequestID != "" {
		msg += " (request-id " + e.RequestID + ")"
	}
	return msg
}

// errThrottled: Graph kept answering 429, 503 or 504 for longer than the
// retry budget.
type errThrottled struct {
	last *graphError
	wait time.Duration
}

func (e *errThrottled) Error() string {
	return fmt.Sprintf("gave up after Microsoft Graph asked to wait (%v more): %v", e.wait.Round(time.Second), e.last)
}

// errUnknown: the connection failed after a send request went out: the
// message may have been sent.
type errUnknown struct {
	op  string
	err error
}

func (e *errUnknown) Error() string {
	return e.op + ": connection lost after the request was sent, outcome unknown: " + e.err.Error()
}

func (e *errUnknown) Unwrap() error { return e.err }

// errTransport: the connection failed. The request may have arrived, but
// it was no send.
type errTransport struct {
	op  string
	err error
}

func (e *errTransport) Error() string { return e.op + ": " + e.err.Error() }
func (e *errTransport) Unwrap() error { return e.err }

// request is one Graph request. body, when set, returns a new body for
// each attempt, with its length.
type request struct {
	op       string // for logs: "sendMail", "create draft", …
	method   string
	url      string
	body     func() (io.ReadCloser, int64, error)
	ctype    string
	noAuth   bool // pre-authenticated URL (upload sessions)
	isSend   bool // its effect is the message going out
	header   map[string]string
	accepted []int // statuses of success; default any 2xx
}

// response is a successful answer.
type response struct {
	status    int
	requestID string
	header    http.Header
}

// mailboxState is what the upstream knows of one mailbox across sessions:
// how long Graph asked it to wait.
type mailboxState struct {
	mu        sync.Mutex
	holdUntil time.Time
}

// holdFor makes every request of the mailbox wait until d from now.
func (m *mailboxState) holdFor(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := time.Now().Add(d); t.After(m.holdUntil) {
		m.holdUntil = t
	}
}

func (m *mailboxState) hold() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return time.Until(m.holdUntil)
}

// do sends r, retrying throttled and unavailable answers (429, 503, 504)
// and connections that failed before the request was written, within the
// message's retry budget and honouring Retry-After; a 429 holds every
// request of the mailbox. out, if not nil, receives the JSON answer.
func (t *transfer) do(ctx context.Context, r *request, out any) (*response, error) {
	backoff := time.Second
	for attempt := 0; ; attempt++ {
		if d := t.mb.hold(); d > 0 {
			if err := t.sleep(ctx, d, nil); err != nil {
				return nil, err
			}
		}
		resp, retry, err := t.once(ctx, r, out)
		if retry == 0 {
			if again, rerr := t.reauth(ctx, r, err); again {
				continue
			} else if rerr != nil {
				return nil, rerr
			}
			return resp, err
		}
		if retry < 0 {
			retry = backoff
			backoff = min(backoff*2, 30*time.Second)
		}
		t.retries++
		t.log.Debug("Microsoft Graph request to be retried", "account", t.account, "op", r.op, "wait", retry, "err", err.Error())
		if err := t.sleep(ctx, retry, err); err != nil {
			return nil, err
		}
	}
}

// reauth answers Graph's refusal of the token (401
// InvalidAuthenticationToken: expired early, revoked, or issued before a
// change in the tenant) once per message: the token source drops the
// token, a fresh one is fetched and again is true, for the request to be
// tried once more. A second refusal stays the request's error; rerr is
// the token source's failure.
func (t *transfer) reauth(ctx context.Context, r *request, err error) (again bool, rerr error) {
	var ge *graphError
	if r.noAuth || t.reauthed || !errors.As(err, &ge) || ge.Status != http.StatusUnauthorized || ge.Code != "InvalidAuthenticationToken" {
		return false, nil
	}
	t.reauthed = true
	u := t.m.u
	if u.rejected != nil {
		u.rejected(t.token)
	}
	t.log.Info("Microsoft Graph refused the token; getting a new one", "account", t.account, "op", r.op,
		"graph_request_id", ge.RequestID, "err", oneLine(ge.Message, 200))
	start := time.Now()
	tok, berr := u.bearer(ctx)
	t.d.obs.UpstreamAuth(proxy.SMTP, time.Since(start), berr)
	if berr != nil {
		return false, berr
	}
	t.token = tok
	return true, nil
}

// sleep waits d unless that would go past the retry budget; then it
// returns an errThrottled wrapping cause (or cause itself, for a failed
// connection).
func (t *transfer) sleep(ctx context.Context, d time.Duration, cause error) error {
	if time.Now().Add(d).After(t.retryDeadline) {
		var ge *graphError
		if errors.As(cause, &ge) || cause == nil {
			return &errThrottled{last: ge, wait: d}
		}
		return cause
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return &errTransport{op: "waiting to retry", err: context.Cause(ctx)}
	}
}

// once makes one attempt. retry > 0 asks for another after that long;
// retry < 0 after the caller's backoff; 0 means done (resp or err).
func (t *transfer) once(ctx context.Context, r *request, out any) (resp *response, retry time.Duration, err error) {
	release, err := t.d.slots.Acquire(ctx, t.account, 0)
	if err != nil {
		return nil, 0, &errTransport{op: r.op, err: fmt.Errorf("waiting for one of the mailbox's %d Graph requests: %w", t.d.opts.MaxConcurrentPerMailbox, context.Cause(ctx))}
	}
	defer release()
	rctx, cancel := context.WithTimeout(ctx, t.d.opts.RequestTimeout)
	defer cancel()
	var (
		written, gotConn bool
		connStart        time.Time
		mu               sync.Mutex
	)
	rctx = httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{
		WroteHeaders: func() { mu.Lock(); written = true; mu.Unlock() },
		GetConn:      func(string) { mu.Lock(); connStart = time.Now(); mu.Unlock() },
		GotConn: func(info httptrace.GotConnInfo) {
			mu.Lock()
			gotConn = true
			d := time.Since(connStart)
			mu.Unlock()
			if !info.Reused {
				t.d.obs.UpstreamConnect(proxy.SMTP, d, nil)
			}
		},
	})
	var body io.ReadCloser
	var n int64
	if r.body != nil {
		if body, n, err = r.body(); err != nil {
			return nil, 0, &errTransport{op: r.op, err: err}
		}
	}
	req, err := http.NewRequestWithContext(rctx, r.method, r.url, body)
	if err != nil {
		if body != nil {
			body.Close()
		}
		return nil, 0, &errTransport{op: r.op, err: err}
	}
	if r.body != nil {
		req.ContentLength = n
		req.Header.Set("Content-Type", r.ctype)
	}
	if !r.noAuth {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("client-request-id", t.clientRequestID)
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	t.requests++
	hr, err := t.d.client.Do(req)
	if err != nil {
		mu.Lock()
		w, connected, cs := written, gotConn, connStart
		mu.Unlock()
		if !connected && !cs.IsZero() {
			// The connection to Graph failed.
			t.d.obs.UpstreamConnect(proxy.SMTP, time.Since(cs), err)
		}
		switch {
		case ctx.Err() != nil:
			if r.isSend && w {
				return nil, 0, &errUnknown{op: r.op, err: context.Cause(ctx)}
			}
			return nil, 0, &errTransport{op: r.op, err: context.Cause(ctx)}
		case !w:
			// Nothing reached Graph: safe to try again.
			return nil, -1, &errTransport{op: r.op, err: err}
		case r.isSend:
			return nil, 0, &errUnknown{op: r.op, err: err}
		}
		return nil, 0, &errTransport{op: r.op, err: err}
	}
	defer hr.Body.Close()
	reqID := hr.Header.Get("request-id")
	t.lastRequestID = reqID
	ok := hr.StatusCode/100 == 2
	if len(r.accepted) > 0 {
		ok = false
		for _, s := range r.accepted {
			ok = ok || s == hr.StatusCode
		}
	}
	if ok {
		if out != nil {
			if err := json.NewDecoder(io.LimitReader(hr.Body, 1<<20)).Decode(out); err != nil {
				return nil, 0, &errTransport{op: r.op, err: fmt.Errorf("reading Microsoft Graph's answer: %w", err)}
			}
		}
		io.Copy(io.Discard, io.LimitReader(hr.Body, 64<<10))
		return &response{status: hr.StatusCode, requestID: reqID, header: hr.Header}, 0, nil
	}
	ge := &graphError{Status: hr.StatusCode, RequestID: reqID, op: r.op}
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if data, _ := io.ReadAll(io.LimitReader(hr.Body, 64<<10)); json.Unmarshal(data, &eb) == nil {
		ge.Code, ge.Message = eb.Error.Code, eb.Error.Message
	}
	switch hr.StatusCode {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		ra := retryAfter(hr.Header.Get("Retry-After"))
		if hr.StatusCode == http.StatusTooManyRequests && ra > 0 {
			t.mb.holdFor(ra)
		}
		if ra <= 0 {
			return nil, -1, ge
		}
		return nil, ra, ge
	}
	return nil, 0, ge
}

// retryAfter reads Retry-After: seconds, or an HTTP date. 0 when absent.
func retryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return min(time.Duration(s)*time.Second, 10*time.Minute)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), 10*time.Minute)
	}
	return 0
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}
