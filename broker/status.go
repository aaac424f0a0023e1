package broker

import (
	"sort"
	"time"

	"github.com/mailbroker/broker/config"
)

// State summarises an account for `broker status`.
type State string

const (
	// StateOK: a valid access token serves logins.
	StateOK State = "ok"
	// StateRefreshing: no valid token yet, and a request is under way or
	// due; nothing has failed.
	StateRefreshing State = "refreshing"
	// StateNeedsLogin: a delegated account has no usable sign-in: never
	// signed in, logged out, or its refresh token was revoked or expired.
	// `broker login` fixes it.
	StateNeedsLogin State = "needs-login"
	// StateFailing: token requests fail, temporarily or until an
	// administrator acts; Explanation says which and how.
	StateFailing State = "failing"
	// StateUnknown: not a configured account.
	StateUnknown State = "unknown"
)

// expiryWarning is how far ahead an expiring credential is reported.
const expiryWarning = 30 * 24 * time.Hour

// Credential kinds in Status.Credentials.
const (
	CredentialClientSecret = "client_secret"
	CredentialCertificate  = "certificate"
	CredentialPassword     = "password"
)

// Credential is one secret an account's tokens depend on, with its expiry
// where known.
type Credential struct {
	Kind string `json:"kind"`
	// Expires is zero when unknown.
	Expires time.Time `json:"expires,omitzero"`
	// Warning is set when the credential has expired or expires within 30
	// days, saying what to renew.
	Warning string `json:"warning,omitempty"`
}

// Status is one account's token state. Its JSON form is `broker status
// -json`, documented in the README: fields are only ever added.
type Status struct {
	Mailbox string      `json:"mailbox"`
	Flow    config.Flow `json:"flow,omitempty"`
	App     string      `json:"app,omitempty"`
	// Identity is who signs in: the login user of a delegated account
	// (possibly a delegate of a shared mailbox), or "app:<client id>".
	Identity string `json:"identity,omitempty"`
	State    State  `json:"state"`
	// Explanation says what is wrong and how to fix it. With State ok it
	// may describe a failing refresh while the current token still serves.
	Explanation string `json:"explanation,omitempty"`
	// AccessTokenExpires is the current access token's expiry.
	AccessTokenExpires time.Time `json:"access_token_expires,omitzero"`
	// LastRefresh is when the last token request ended; LastRefreshOK its
	// outcome.
	LastRefresh   time.Time `json:"last_refresh,omitzero"`
	LastRefreshOK bool      `json:"last_refresh_ok"`
	// NextAttempt is when a failed request is retried.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// SignedIn is when `broker login` last signed the account in;
	// RefreshTokenIssued when the refresh token in use was issued (each
	// refresh rotates it).
	SignedIn           time.Time    `json:"signed_in,omitzero"`
	RefreshTokenIssued time.Time    `json:"refresh_token_issued,omitzero"`
	Credentials        []Credential `json:"credentials,omitempty"`
	// UpstreamRejection is upstream's last refusal of a token.
	UpstreamRejection string `json:"upstream_rejection,omitempty"`
	// SMTPVia is where the account's SMTP submissions go: "smtp" or
	// "graph" (Microsoft Graph).
	SMTPVia string `json:"smtp_via,omitempty"`
}

// Attention reports whether the account cannot serve logins or will soon
// stop: `broker status` exits non-zero for it.
func (s *Status) Attention() (critical, warning bool) {
	critical = s.State != StateOK && s.State != StateRefreshing
	for _, c := range s.Credentials {
		if c.Warning != "" {
			warning = true
		}
	}
	return critical, warning
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
