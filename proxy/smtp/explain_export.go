package smtp

import gosmtp "github.com/emersion/go-smtp"

// ExplainRefusal says what an administrator should do about Exchange
// Online's SMTP reply, as the proxy logs it: broker doctor prints the same
// advice. temporary: the refusal is not about the account and passes by
// itself. ok is false for a reply it does not know.
func ExplainRefusal(reply *gosmtp.SMTPError) (advice string, temporary, ok bool) {
	e, ok := explain(reply)
	return e.advice, e.temporary, ok
}
