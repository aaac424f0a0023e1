package imap

import "strings"

// explanation turns an Exchange Online refusal into what an
// administrator has to do about it.
type explanation struct {
	match string // case-insensitive substring of upstream's response text
	// temporary: the refusal is not about the account; the client should
	// retry later and the Authenticator is not told.
	temporary bool
	advice    string
}

var explanations = []explanation{
	{
		match: "AUTHENTICATE failed",
		advice: "Exchange refused the token: check that it was issued for https://outlook.office.com " +
			"(delegated IMAP.AccessAsUser.All, or app-only IMAP.AccessAsApp via https://outlook.office365.com/.default), " +
			"that IMAP is enabled for the mailbox (Set-CASMailbox -Identity <mailbox> -ImapEnabled $true), " +
			"that the account's mailbox address is right, " +
			"and for app-only tokens that the service principal exists (New-ServicePrincipal) and has FullAccess " +
			"(Add-MailboxPermission -Identity <mailbox> -User <service principal> -AccessRights FullAccess)",
	},
	{
		match: "User is authenticated but not connected",
		advice: "the token's identity has no rights on this mailbox: grant them " +
			"(Add-MailboxPermission -Identity <mailbox> -User <identity> -AccessRights FullAccess) or log in as the mailbox itself",
	},
	{
		match:     "Request is throttled",
		temporary: true,
		advice:    "Exchange is throttling this mailbox or tenant; clients are told to retry later",
	},
	{
		match:     "AccessTokenExpired",
		temporary: true,
		advice:    "the access token expired; the next login uses a fresh one",
	},
}

// explain looks up upstream's response text. It returns ok false for a
// text it does not know.
func explain(text string) (e explanation, ok bool) {
	lower := strings.ToLower(text)
	for _, e := range explanations {
		if strings.Contains(lower, strings.ToLower(e.match)) {
			return e, true
		}
	}
	return explanation{}, false
}
