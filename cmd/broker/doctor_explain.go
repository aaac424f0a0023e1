package main

import (
	"github.com/mailbroker/broker/proxy/imap"
	"github.com/mailbroker/broker/proxy/smtp"
)

// Exchange's IMAP and SMTP refusals, explained as the proxy logs them.
var (
	imapRefusalAdvice = imap.ExplainRefusal
	smtpRefusalAdvice = smtp.ExplainRefusal
)
