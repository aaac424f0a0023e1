package proxy

import (
	"errors"
	"time"
)

// Observer is told of the events that broker's metrics count. The protocol
// servers call it from their sessions' goroutines, concurrently; its
// methods must be quick and must not block. Each options struct that takes
// one documents a nil Observer as no observer at all.
//
// An implementation embeds NopObserver, so that events added later have a
// default.
type Observer interface {
	// SessionStarted: a client connection was accepted and its session
	// starts (connections refused at a cap are ConnRefused instead).
	SessionStarted(p Protocol)
	// SessionEnded: the session has ended, d after it was accepted.
	SessionEnded(p Protocol, d time.Duration)
	// LoginOutcome: a run of the login pipeline ended (LoginUpstream), in
	// one of the Login* outcomes.
	LoginOutcome(p Protocol, outcome string)
	// BytesRelayed: n bytes went in direction dir between a logged-in
	// client and upstream.
	BytesRelayed(p Protocol, dir Direction, n int64)
	// UpstreamConnect: connecting to upstream (TCP, TLS, and for SMTP the
	// EHLO and STARTTLS) took d and failed with err, or succeeded (nil).
	UpstreamConnect(p Protocol, d time.Duration, err error)
	// UpstreamAuth: authenticating upstream on a connected session took d
	// and failed with err, or succeeded (nil).
	UpstreamAuth(p Protocol, d time.Duration, err error)
	// UpstreamReused: a login took an upstream session that an earlier
	// client of the same mailbox had left authenticated, instead of
	// connecting and authenticating (UpstreamConnect, UpstreamAuth).
	UpstreamReused(p Protocol)
	// UpstreamWarm: a login asked the warm pool (FrontendOptions.
	// WarmConnections) for a connection: hit, it took one ready and did
	// not connect (UpstreamConnect); else it connected itself.
	UpstreamWarm(p Protocol, hit bool)
	// MessageRelayed: an SMTP transaction's DATA ended in one of the
	// Message* outcomes.
	MessageRelayed(outcome string)
	// SlotWait: a login waited d for one of its mailbox's upstream
	// connections (Server.TakeSlot), whether or not it got one.
	SlotWait(p Protocol, d time.Duration)
	// ConnRefused: a connection or login was refused at a cap: reason is
	// the cap's setting, as logged (max_connections,
	// max_connections_per_source, max_connections_per_mailbox).
	ConnRefused(p Protocol, reason string)
}

// NopObserver ignores every event.
type NopObserver struct{}

func (NopObserver) SessionStarted(Protocol)                        {}
func (NopObserver) SessionEnded(Protocol, time.Duration)           {}
func (NopObserver) LoginOutcome(Protocol, string)                  {}
func (NopObserver) BytesRelayed(Protocol, Direction, int64)        {}
func (NopObserver) UpstreamConnect(Protocol, time.Duration, error) {}
func (NopObserver) UpstreamAuth(Protocol, time.Duration, error)    {}
func (NopObserver) UpstreamReused(Protocol)                        {}
func (NopObserver) UpstreamWarm(Protocol, bool)                    {}
func (NopObserver) MessageRelayed(string)                          {}
func (NopObserver) SlotWait(Protocol, time.Duration)               {}
func (NopObserver) ConnRefused(Protocol, string)                   {}

// ObserverOr returns o, or NopObserver if o is nil: what a server keeps,
// so that it never checks for nil.
func ObserverOr(o Observer) Observer {
	if o == nil {
		return NopObserver{}
	}
	return o
}

// Direction is a direction of relayed bytes.
type Direction string

const (
	// Up is client to upstream.
	Up Direction = "up"
	// Down is upstream to client.
	Down Direction = "down"
)

// Outcomes of a login (Observer.LoginOutcome).
const (
	LoginOK = "ok"
	// LoginCredentials: unknown user or wrong password (KindCredentials).
	LoginCredentials = "credentials"
	// LoginThrottled: refused by the failed-login throttle, with the same
	// answer to the client as wrong credentials (ErrThrottled).
	LoginThrottled = "throttled"
	// LoginAccount: the account needs an administrator (KindAccount).
	LoginAccount = "account"
	// LoginBusy: every upstream connection of the mailbox stayed taken
	// for the whole wait (ErrSlotWait).
	LoginBusy = "busy"
	// LoginUnavailable: any other temporary failure (KindUnavailable).
	LoginUnavailable = "unavailable"
)

// LoginOutcomes lists every login outcome.
var LoginOutcomes = []string{LoginOK, LoginCredentials, LoginThrottled, LoginAccount, LoginBusy, LoginUnavailable}

// Outcomes of an SMTP message (Observer.MessageRelayed).
const (
	// MessageRelayed: upstream accepted the message.
	MessageRelayed = "relayed"
	// MessageRejected: the client got a permanent refusal (5xx), from
	// upstream or for a message broker cannot relay.
	MessageRejected = "rejected"
	// MessageFailedTemporary: the client got a temporary failure (4xx)
	// and keeps the message: upstream lost or slow, or its 4xx.
	MessageFailedTemporary = "failed_temporary"
)

// MessageOutcomes lists every message outcome.
var MessageOutcomes = []string{MessageRelayed, MessageRejected, MessageFailedTemporary}

// ErrThrottled marks a login refused by the failed-login throttle: an
// Authenticator wraps it in its KindCredentials LoginError, so that the
// client's answer stays that of wrong credentials while metrics tell the
// two apart.
var ErrThrottled = errors.New("refused by the failed-login throttle")

// LoginOutcomeOf returns the outcome of a login that failed with le, or
// LoginOK if le is nil.
func LoginOutcomeOf(le *LoginError) string {
	switch {
	case le == nil:
		return LoginOK
	case errors.Is(le.Err, ErrThrottled):
		return LoginThrottled
	case errors.Is(le.Err, ErrSlotWait):
		return LoginBusy
	case le.Kind == KindCredentials:
		return LoginCredentials
	case le.Kind == KindAccount:
		return LoginAccount
	}
	return LoginUnavailable
}

// Refusal reasons, as logged and as Observer.ConnRefused names them.
var RefusalReasons = []string{refusedMaxConnections, refusedPerSource, refusedPerMailbox}
