package broker

import (
	"sort"
	"time"

	"github.com/mailbroker/broker/config"
)

// State summarises an account for `broker status`.
type State string

const (
	StateOK          State = "ok"
	StatePending     State = "pending" // no token yet, none refused either
	StateUnavailable State = "unavailable"
	StateNeedsAdmin  State = "needs-admin"
	StateUnknown     State = "unknown" // not a configured account
)

// Status is one account's token state.
type Status struct {
	Mailbox string      `json:"mailbox"`
	Flow    config.Flow `json:"flow,omitempty"`
	State   State       `json:"state"`
	// Explanation says what is wrong and how to fix it; when State is ok it
	// may describe a failing refresh while the current token still serves.
	Explanation string    `json:"explanation,omitempty"`
	TokenExpiry time.Time `json:"token_expiry,omitzero"`
	// NextAttempt is when a failed request is retried.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// UpstreamRejection is upstream's last refusal of a token.
	UpstreamRejection string `json:"upstream_rejection,omitempty"`
}

// AccountStatus reports the token state of one account.
func (b *Broker) AccountStatus(mailbox string) Status {
	mailbox = normalize(mailbox)
	acct := b.accounts.Load().byMailbox[mailbox]
	a := b.tokens.account(mailbox)
	if acct == nil || a == nil {
		return Status{Mailbox: mailbox, State: StateUnknown, Explanation: errNotConfigured(mailbox).Error()}
	}
	s := Status{Mailbox: mailbox, Flow: acct.Flow}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := b.now()
	valid := a.tok != nil && a.tok.Expiry.Sub(now) >= minValidity
	if a.tok != nil && now.Before(a.tok.Expiry) {
		s.TokenExpiry = a.tok.Expiry
	}
	s.UpstreamRejection = a.rejected
	if a.err != nil {
		s.Explanation = a.err.Error()
		s.NextAttempt = a.retryAt
	}
	switch {
	case a.grant == nil && !valid:
		s.State, s.Explanation = StateNeedsAdmin, "flow "+string(acct.Flow)+": "+errNoGrant.Error()
	case a.err != nil && a.err.Permanent:
		s.State = StateNeedsAdmin
	case valid:
		s.State = StateOK
	case a.err != nil:
		s.State = StateUnavailable
	default:
		s.State = StatePending
	}
	return s
}

// AccountStatuses reports every configured account, by mailbox.
func (b *Broker) AccountStatuses() []Status {
	idx := b.accounts.Load()
	list := make([]Status, 0, len(idx.byMailbox))
	for mailbox := range idx.byMailbox {
		list = append(list, b.AccountStatus(mailbox))
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Mailbox < list[j].Mailbox })
	return list
}
