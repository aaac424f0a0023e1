package broker

// What `broker doctor` asks of the token manager, and its reading of access
// tokens: which audience, roles and scopes Exchange Online will look for.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mailbroker/broker/config"
)

// RetryNow makes mailbox's sign-in, when it is failing, request a token at
// once instead of at its next scheduled retry: an administrator who runs
// broker doctor has likely just fixed something. A sign-in waiting for
// broker login keeps waiting.
func (b *Broker) RetryNow(mailbox string) error {
	a := b.tokens.account(normalize(mailbox))
	if a == nil {
		return errNotConfigured(mailbox)
	}
	b.tokens.retryNow(func(s *signIn) bool { return s == a })
	return nil
}

// TokenClaims are the claims of an access token that decide whether
// Exchange Online accepts it, read without verifying the signature.
type TokenClaims struct {
	Audience string   `json:"aud"`
	Roles    []string `json:"roles"`
	// Scope is the delegated scopes, space-separated, without resource.
	Scope    string `json:"scp"`
	IDType   string `json:"idtyp"`
	AppID    string `json:"appid"`
	TenantID string `json:"tid"`
	UPN      string `json:"upn"`
	Expires  int64  `json:"exp"`
}

// Scopes splits the scp claim.
func (c *TokenClaims) Scopes() []string { return strings.Fields(c.Scope) }

// DecodeTokenClaims reads a JWT's payload. It does not verify the token:
// Exchange does that; this only says what the token claims.
func DecodeTokenClaims(token string) (*TokenClaims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("the access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, fmt.Errorf("the access token's payload is not base64url: %w", err)
	}
	var raw struct {
		TokenClaims
		// aud is a string in Entra's tokens, a list in some others.
		Audience json.RawMessage `json:"aud"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return nil, fmt.Errorf("the access token's payload is not JSON: %w", err)
	}
	c := raw.TokenClaims
	var auds []string
	if json.Unmarshal(raw.Audience, &c.Audience) != nil && json.Unmarshal(raw.Audience, &auds) == nil && len(auds) > 0 {
		c.Audience = auds[0]
	}
	return &c, nil
}

// Well-known resource IDs that tokens may carry as aud instead of a URL.
const (
	exchangeOnlineAppID  = "00000002-0000-0ff1-ce00-000000000000"
	microsoftGraphAppID  = "00000003-0000-0000-c000-000000000000"
	globalOutlookOffice  = "https://outlook.office.com"
	globalOutlookOff365  = "https://outlook.office365.com"
	permissionsPathApp   = "Entra admin center > App registrations > %s > API permissions > Add a permission > APIs my organization uses > Office 365 Exchange Online > Application permissions"
	permissionsPathDeleg = "Entra admin center > App registrations > %s > API permissions > Add a permission > Microsoft Graph > Delegated permissions"
)

// Permission names Exchange Online requires, by protocol and kind of token.
const (
	PermIMAPApp       = "IMAP.AccessAsApp"
	PermSMTPApp       = "SMTP.SendAsApp"
	PermIMAPDelegated = "IMAP.AccessAsUser.All"
	PermSMTPDelegated = "SMTP.Send"
	PermPOP3App       = "POP.AccessAsApp"
	PermPOP3Delegated = "POP.AccessAsUser.All"
)

// PermissionCheck is what an account's access token lacks for the
// protocols broker serves.
type PermissionCheck struct {
	AppOnly bool
	// Audience is the token's aud; AudienceOK reports whether it is
	// Exchange Online's (Outlook's) in the app's cloud.
	Audience   string
	AudienceOK bool
	// Granted are the token's roles (app-only) or delegated scopes.
	Granted []string
	// MissingIMAP, MissingSMTP and MissingPOP3 name the permission the
	// token lacks for that protocol, "" when it has it or the protocol is
	// not needed.
	MissingIMAP, MissingSMTP, MissingPOP3 string
	// ConfigLacks is set for a delegated account whose configured scopes
	// do not ask for a missing permission: the fix is broker.toml's, not
	// Entra's.
	ConfigLacks bool

	acct *config.Account
}

// OK reports whether Exchange should accept the token for every protocol
// needed.
func (p *PermissionCheck) OK() bool {
	return p.AudienceOK && p.MissingIMAP == "" && p.MissingSMTP == "" && p.MissingPOP3 == ""
}

// PermissionNeeds are the protocols whose permissions a token must carry.
type PermissionNeeds struct{ IMAP, SMTP, POP3 bool }

// CheckTokenPermissions decodes token and checks it against what IMAP
// (needIMAP) and SMTP (needSMTP) require of acct's kind of token.
func CheckTokenPermissions(acct *config.Account, token string, needIMAP, needSMTP bool) (*PermissionCheck, *TokenClaims, error) {
	return CheckTokenPermissionsFor(acct, token, PermissionNeeds{IMAP: needIMAP, SMTP: needSMTP})
}

// CheckTokenPermissionsFor decodes token and checks it against what the
// protocols of need require of acct's kind of token.
func CheckTokenPermissionsFor(acct *config.Account, token string, need PermissionNeeds) (*PermissionCheck, *TokenClaims, error) {
	needIMAP, needSMTP := need.IMAP, need.SMTP
	c, err := DecodeTokenClaims(token)
	if err != nil {
		return nil, nil, err
	}
	p := &PermissionCheck{acct: acct, Audience: c.Audience, AppOnly: !acct.Delegated()}
	p.AudienceOK = outlookAudience(acct.App.Cloud, c.Audience)
	imapPerm, smtpPerm, popPerm := PermIMAPDelegated, PermSMTPDelegated, PermPOP3Delegated
	p.Granted = c.Scopes()
	if p.AppOnly {
		imapPerm, smtpPerm, popPerm = PermIMAPApp, PermSMTPApp, PermPOP3App
		p.Granted = c.Roles
	}
	has := func(perm string) bool {
		return slices.ContainsFunc(p.Granted, func(g string) bool { return strings.EqualFold(g, perm) })
	}
	if needIMAP && !has(imapPerm) {
		p.MissingIMAP = imapPerm
	}
	if needSMTP && !has(smtpPerm) {
		p.MissingSMTP = smtpPerm
	}
	if need.POP3 && !has(popPerm) {
		p.MissingPOP3 = popPerm
	}
	if !p.AppOnly {
		for _, m := range p.missing() {
			if !scopeRequested(acct, m) {
				p.ConfigLacks = true
			}
		}
	}
	return p, c, nil
}

// scopeRequested reports whether acct's configured scopes ask for perm
// (any resource's .default asks for everything consented).
func scopeRequested(acct *config.Account, perm string) bool {
	for _, s := range acct.Scopes {
		if strings.EqualFold(s, perm) || strings.HasSuffix(strings.ToLower(s), "/"+strings.ToLower(perm)) || strings.HasSuffix(s, "/.default") {
			return true
		}
	}
	return false
}

func (p *PermissionCheck) missing() []string {
	var m []string
	for _, s := range []string{p.MissingIMAP, p.MissingSMTP, p.MissingPOP3} {
		if s != "" {
			m = append(m, s)
		}
	}
	return m
}

// outlookAudience reports whether aud is Exchange Online's in cloud.
func outlookAudience(cloud *config.Cloud, aud string) bool {
	aud = strings.TrimSuffix(strings.ToLower(aud), "/")
	if aud == exchangeOnlineAppID {
		return true
	}
	for _, r := range []string{cloud.AppResource, cloud.DelegatedResource} {
		if aud == strings.ToLower(r) {
			return true
		}
	}
	// The global cloud's two Outlook names are interchangeable.
	return cloud.Name == config.DefaultCloud && (aud == globalOutlookOffice || aud == globalOutlookOff365)
}

// graphAudience reports whether aud is Microsoft Graph's.
func graphAudience(cloud *config.Cloud, aud string) bool {
	aud = strings.TrimSuffix(strings.ToLower(aud), "/")
	return aud == microsoftGraphAppID || aud == strings.ToLower(cloud.GraphResource) || aud == "https://graph.microsoft.com"
}

// Problem says in one line what is wrong, "" when nothing is.
func (p *PermissionCheck) Problem() string {
	kind := "scopes"
	if p.AppOnly {
		kind = "roles"
	}
	granted := strings.Join(p.Granted, " ")
	if granted == "" {
		granted = "none"
	}
	switch {
	case !p.AudienceOK && graphAudience(p.acct.App.Cloud, p.Audience):
		return fmt.Sprintf("the token is for Microsoft Graph (aud %s), which Exchange's IMAP, POP and SMTP refuse", p.Audience)
	case !p.AudienceOK:
		return fmt.Sprintf("the token's audience is %s, not Exchange Online (%s)", p.Audience, p.acct.App.Cloud.DelegatedResource)
	case len(p.missing()) > 0:
		return fmt.Sprintf("the token lacks %s (its %s: %s)", strings.Join(p.missing(), " and "), kind, granted)
	}
	return ""
}

// Fix is one sentence: the admin step that gives the token what it lacks,
// "" when nothing is missing.
func (p *PermissionCheck) Fix() string {
	acct := p.acct
	app := acct.App.Name
	missing := strings.Join(p.missing(), " and ")
	switch {
	case !p.AudienceOK && p.AppOnly:
		return fmt.Sprintf("App-only tokens for IMAP, POP and SMTP must be requested with the scope %s: remove scopes from account %s in broker.toml (the default is right) and check the app's cloud.", acct.App.Cloud.AppScope(), acct.Mailbox)
	case !p.AudienceOK:
		return fmt.Sprintf("Request the Outlook scopes (%s), not Graph's, for account %s: fix its scopes in broker.toml (or remove them for the default), then run broker login %s.", strings.Join(acct.App.Cloud.DelegatedScopes(), " "), acct.Mailbox, acct.Mailbox)
	case missing == "":
		return ""
	case p.AppOnly:
		extra := ""
		if slices.ContainsFunc(p.Granted, func(g string) bool { return strings.EqualFold(g, "Mail.Send") }) {
			extra = " (Mail.Send is Graph's and does not work for SMTP)"
		}
		return fmt.Sprintf("Add the application permission %s in "+permissionsPathApp+", then Grant admin consent%s; broker uses it with its next token, or at once after broker logout %s.", missing, app, extra, acct.Mailbox)
	case p.ConfigLacks:
		return fmt.Sprintf("Add %s to the scopes of account %s in broker.toml (or remove its scopes for the default), then run broker login %s.", qualified(acct.App.Cloud, p.missing()), acct.Mailbox, acct.Mailbox)
	}
	return fmt.Sprintf("Add the delegated permission %s in "+permissionsPathDeleg+", then Grant admin consent, and run broker login %s (a sign-in keeps the scopes it was made with).", missing, app, acct.Mailbox)
}

func qualified(cloud *config.Cloud, perms []string) string {
	q := make([]string, len(perms))
	for i, p := range perms {
		q[i] = cloud.DelegatedResource + "/" + p
	}
	return strings.Join(q, " and ")
}
