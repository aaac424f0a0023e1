package pop3

import "strings"

// explanation turns an Exchange Online refusal into what an administrator
// has to do about it.
type explanation struct {
	match string // case-insensitive substring of upstream's -ERR text
	// temporary: the refusal is not about the account; the client should
	// retry later and the Authenticator is not told.
	temporary bool
	advice    string
}

// adviceAuthFailed is the advice for Exchange's refusal of a token, which
// says nothing of why.
const adviceAuthFailed = "Exchange refused the token: check that it was issued for https://outlook.office.com " +
	"(delegated POP.AccessAsUser.All, consented, with the sign-in made after [pop3] was added: broker login again if not; " +
	"or app-only POP.AccessAsApp via https://outlook.office365.com/.default, with admin consent), " +
	"that POP is enabled for the mailbox (Set-CASMailbox -Identity <mailbox> -PopEnabled $true), " +
	"that the account's mailbox address is right, " +
	"and for app-only tokens that the service principal exists (New-ServicePrincipal) and has FullAccess " +
	"(Add-MailboxPermission -Identity <mailbox> -User <service principal> -AccessRights FullAccess)"

var explanations = []explanation{
	// RFC 2449 §8 and RFC 3206 response codes first: they say whether to
	// come back later.
	{match: "[SYS/TEMP]", temporary: true, advice: "upstream reports a temporary failure; clients are told to retry later"},
	{match: "[IN-USE]", temporary: true, advice: "the mailbox is locked by another POP3 session; clients are told to retry later"},
	{match: "[LOGIN-DELAY]", temporary: true, advice: "upstream wants fewer logins to this mailbox; clients are told to retry later"},
	{match: "throttled", temporary: true, advice: "Exchange is throttling this mailbox or tenant; clients are told to retry later"},
	{match: "Server Unavailable", temporary: true, advice: "Exchange's POP3 service is unavailable; clients are told to retry later"},
	{match: "AccessTokenExpired", temporary: true, advice: "the access token expired; the next login uses a fresh one"},
	{match: "[SYS/PERM]", advice: "upstream refuses this mailbox permanently: " + adviceAuthFailed},
	// Exchange Online: "-ERR Authentication failure: unknown user name or
	// bad password."; Dovecot: "-ERR [AUTH] Authentication failed.".
	{match: "Authentication failure", advice: adviceAuthFailed},
	{match: "Logon failure", advice: adviceAuthFailed},
	{match: "[AUTH]", advice: adviceAuthFailed},
	{match: "Authentication failed", advice: adviceAuthFailed},
	{match: "Unrecognized authentication type", advice: "upstream does not offer XOAUTH2 for POP3: check that upstream is Exchange Online's POP3 (outlook.office365.com:995)"},
}

// explain looks up upstream's -ERR text. It returns ok false for a text
// it does not know.
func explain(text string) (e explanation, ok bool) {
	lower := strings.ToLower(text)
	for _, e := range explanations {
		if strings.Contains(lower, strings.ToLower(e.match)) {
			return e, true
		}
	}
	return explanation{}, false
}

// ExplainRefusal says what an administrator should do about Exchange
// Online's refusal of a POP3 login (the text after -ERR), as the proxy
// logs it. temporary: the refusal is not about the account and passes by
// itself. ok is false for a text it does not know.
func ExplainRefusal(text string) (advice string, temporary, ok bool) {
	e, ok := explain(text)
	return e.advice, e.temporary, ok
}
