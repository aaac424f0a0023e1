package graph

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
)

// errContent: the message could not be read as MIME.
type errContent struct{ err error }

func (e *errContent) Error() string { return "the message is not valid MIME: " + e.err.Error() }
func (e *errContent) Unwrap() error { return e.err }

// errBodyTooLarge: what stays in the draft's MIME form (header and
// bodies) does not fit one Graph request.
type errBodyTooLarge struct{ size int64 }

func (e *errBodyTooLarge) Error() string {
	return fmt.Sprintf("the message without its attachments is %d bytes, more than one Microsoft Graph request takes", e.size)
}

var errNoRecipients = errors.New("the message has no recipients")

func reply(code int, enhanced gosmtp.EnhancedCode, msg string) *gosmtp.SMTPError {
	return &gosmtp.SMTPError{Code: code, EnhancedCode: enhanced, Message: msg}
}

// Client-visible replies.
const (
	textAdmin    = "Microsoft Graph refused the mailbox, message not accepted; contact your administrator"
	textThrottle = "Microsoft Graph is throttling this mailbox, message not accepted; try again later"
	textUnknown  = "Microsoft Graph connection lost after sending, outcome unknown; message not accepted, try again later"
)

// replyFor turns a failure to send into the client's reply and, for what
// an administrator must fix, the advice the log carries. Nothing that
// might pass or that an administrator can fix is permanent: the client
// keeps the message (4xx). Permanent are only what this message did:
// its From (send-as), its size, its content, its recipients.
func replyFor(err error, account, from string) (*gosmtp.SMTPError, string) {
	var (
		ge  *graphError
		th  *errThrottled
		le  *proxy.LoginError
		ce  *errContent
		bt  *errBodyTooLarge
		unk *errUnknown
	)
	switch {
	case errors.As(err, &le):
		if le.Kind == proxy.KindAccount {
			return reply(451, gosmtp.EnhancedCode{4, 7, 0}, proxy.ReplyText(le.Reason, textAdmin)),
				"broker cannot get the account's Microsoft Graph token: see broker status " + account
		}
		return reply(451, gosmtp.EnhancedCode{4, 7, 0}, proxy.ReplyText(le.Reason, "Temporary failure, try again later")), ""
	case errors.As(err, &th):
		return reply(451, gosmtp.EnhancedCode{4, 4, 5}, textThrottle),
			"Microsoft Graph throttles this app on this mailbox (4 concurrent requests, 10,000 per 10 minutes): other clients of the same app use it too, or the sender sends faster than Graph allows"
	case errors.As(err, &unk):
		return reply(451, gosmtp.EnhancedCode{4, 4, 2}, textUnknown), ""
	case errors.Is(err, errNoRecipients):
		return reply(554, gosmtp.EnhancedCode{5, 5, 1}, "No valid recipients"), ""
	case errors.Is(err, errHeaderTooLarge):
		return reply(554, gosmtp.EnhancedCode{5, 6, 0}, "Message header too large, not accepted"), ""
	case errors.As(err, &ce):
		return reply(554, gosmtp.EnhancedCode{5, 6, 0}, "Message is not valid MIME, not accepted"), ""
	case errors.As(err, &bt):
		return reply(552, gosmtp.EnhancedCode{5, 3, 4}, "Message text too large for Microsoft Graph (attachments may be larger)"), ""
	case errors.As(err, &ge):
		return graphReply(ge, account, from)
	}
	if proxy.IsTimeout(err) {
		return reply(451, gosmtp.EnhancedCode{4, 4, 1}, "Microsoft Graph did not answer in time, message not accepted; try again later"), ""
	}
	return errLost, ""
}

// graphReply maps Graph's error codes.
func graphReply(ge *graphError, account, from string) (*gosmtp.SMTPError, string) {
	switch ge.Code {
	case "ErrorSendAsDenied":
		return reply(550, gosmtp.EnhancedCode{5, 7, 60}, "Client does not have permissions to send as this sender"),
			fmt.Sprintf("the message's From (envelope %q) is neither %s nor a mailbox it may send as: have the client send as %s, "+
				"or grant Send As (Add-RecipientPermission -Identity <from address> -Trustee %s -AccessRights SendAs; "+
				"for a delegated account the trustee is the signed-in user)", from, account, account, account)
	case "ErrorMessageSizeExceeded":
		return reply(552, gosmtp.EnhancedCode{5, 3, 4}, "Message size exceeds fixed maximum message size"),
			"the message is larger than the mailbox may send: raise it (Set-Mailbox -Identity " + account + " -MaxSendSize 150MB) or have the client send smaller messages"
	case "MailboxNotEnabledForRESTAPI", "MailboxNotSupportedForRESTAPI":
		return reply(451, gosmtp.EnhancedCode{4, 7, 0}, textAdmin),
			"Microsoft Graph cannot reach " + account + ": the mailbox is inactive, soft-deleted, on-premises or has no Exchange Online licence; license it in Exchange Online, or send through SMTP (smtp_via = \"smtp\")"
	case "ErrorInvalidUser", "ResourceNotFound":
		if ge.Status == http.StatusNotFound {
			return reply(451, gosmtp.EnhancedCode{4, 7, 0}, textAdmin),
				"Microsoft Graph does not know the user " + account + ": check the account's mailbox address and the app's tenant"
		}
	case "ErrorAccessDenied", "AccessDenied", "Authorization_RequestDenied":
		if strings.Contains(ge.Message, "AccessPolicy") || strings.Contains(ge.Message, "RAOP") {
			return reply(451, gosmtp.EnhancedCode{4, 7, 0}, textAdmin),
				"an application access policy keeps the app out of " + account + ": add the mailbox to the policy's group " +
					"(New-ApplicationAccessPolicy -AppId <client id> -PolicyScopeGroupId <group> -AccessRight RestrictAccess; " +
					"Test-ApplicationAccessPolicy -Identity " + account + " -AppId <client id>), " +
					"or scope the app with RBAC for Applications (New-ManagementRoleAssignment -App <service principal> -Role \"Application Mail.Send\" -CustomResourceScope <scope>)"
		}
		return reply(451, gosmtp.EnhancedCode{4, 7, 0}, textAdmin),
			"Microsoft Graph denied access to " + account + ": app-only, add the Microsoft Graph application permissions Mail.Send " +
				"(and Mail.ReadWrite, for messages over 3 MB or whose recipients differ from their header) and grant admin consent, " +
				"then scope them (application access policy or RBAC for Applications); delegated, consent to Mail.Send and Mail.ReadWrite " +
				"(Mail.Send.Shared and Mail.ReadWrite.Shared for a shared mailbox) and give the user access to the mailbox"
	case "InvalidAuthenticationToken":
		return reply(451, gosmtp.EnhancedCode{4, 7, 0}, textAdmin),
			"Microsoft Graph refused the token, and a new one fetched for this message too (" + oneLine(ge.Message, 120) + "): " +
				"check that [smtp] graph_url is the Graph host of the app's cloud"
	case "ErrorInvalidRecipients":
		return reply(550, gosmtp.EnhancedCode{5, 1, 3}, "Recipient address not accepted by Microsoft Graph"), ""
	case "ErrorQuotaExceeded", "ErrorSubmissionQuotaExceeded":
		return reply(451, gosmtp.EnhancedCode{4, 5, 3}, "Mailbox sending quota exceeded, try again later"),
			"the mailbox exceeded a sending limit (10,000 recipients a day, 30 messages a minute)"
	}
	switch {
	case ge.Status == http.StatusRequestEntityTooLarge:
		return reply(552, gosmtp.EnhancedCode{5, 3, 4}, "Message size exceeds fixed maximum message size"), ""
	case strings.HasPrefix(ge.Code, "ErrorMimeContent"):
		return reply(554, gosmtp.EnhancedCode{5, 6, 0}, "Message content not accepted by Microsoft Graph"), ""
	case ge.Status == http.StatusTooManyRequests || ge.Status == http.StatusServiceUnavailable || ge.Status == http.StatusGatewayTimeout:
		return reply(451, gosmtp.EnhancedCode{4, 4, 5}, textThrottle), ""
	}
	return reply(451, gosmtp.EnhancedCode{4, 3, 0}, "Microsoft Graph refused the message, not accepted; try again later"), ""
}
