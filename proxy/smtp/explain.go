package smtp

import (
	"fmt"
	"strings"

	gosmtp "github.com/emersion/go-smtp"
)

// explanation turns an Exchange Online SMTP refusal into what an
// administrator has to do about it.
type explanation struct {
	enhanced string // enhanced status code, e.g. "5.7.139"
	match    string // case-insensitive substring of the text; "" matches any
	// temporary: not about the account; the client retries later and the
	// Authenticator is not told.
	temporary bool
	advice    string
}

var explanations = []explanation{
	{
		enhanced: "5.7.139",
		match:    "security defaults",
		advice: "the tenant's security defaults block SMTP AUTH: turn them off or move to Conditional Access " +
			"(Entra admin center > Identity > Overview > Properties > Manage security defaults)",
	},
	{
		enhanced: "5.7.139",
		advice: "SMTP AUTH is disabled for this mailbox or tenant: enable it " +
			"(Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false; " +
			"tenant-wide: Set-TransportConfig -SmtpClientAuthenticationDisabled $false)",
	},
	{
		enhanced: "5.7.3",
		advice: "Exchange refused the token: check that it was issued for SMTP " +
			"(delegated SMTP.Send, or app-only SMTP.SendAsApp via https://outlook.office365.com/.default with admin consent), " +
			"that the account's mailbox address is right, " +
			"and for app-only tokens that the service principal exists (New-ServicePrincipal) and has FullAccess " +
			"(Add-MailboxPermission -Identity <mailbox> -User <service principal> -AccessRights FullAccess)",
	},
	{
		enhanced: "5.7.57",
		advice:   "Exchange did not take the login: check that SMTP AUTH is enabled for the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false)",
	},
	{
		enhanced:  "4.3.2",
		temporary: true,
		advice: "Exchange allows 3 concurrent SMTP connections per mailbox and other clients use this one: " +
			"lower [smtp] max_connections_per_mailbox or stop the other senders",
	},
	{
		enhanced:  "4.7.66",
		temporary: true,
		advice:    "upstream refused the TLS version",
	},
}

// explain looks up upstream's reply. It returns ok false for a reply it
// does not know.
func explain(reply *gosmtp.SMTPError) (e explanation, ok bool) {
	code := enhancedString(reply.EnhancedCode)
	lower := strings.ToLower(reply.Message)
	for _, e := range explanations {
		if e.enhanced == code && strings.Contains(lower, strings.ToLower(e.match)) {
			return e, true
		}
	}
	return explanation{}, false
}

func enhancedString(c gosmtp.EnhancedCode) string {
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}
