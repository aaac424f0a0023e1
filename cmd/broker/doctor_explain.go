package main

import (
	"github.com/mailbroker/broker/proxy/imap"
	"github.com/mailbroker/broker/proxy/pop3"
	"github.com/mailbroker/broker/proxy/smtp"
)

// Exchange's IMAP, SMTP and POP3 refusals, explained as the proxy logs them.
var (
	imapRefusalAdvice = imap.ExplainRefusal
	smtpRefusalAdvice = smtp.ExplainRefusal
	pop3RefusalAdvice = pop3.ExplainRefusal
)
