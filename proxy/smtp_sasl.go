package proxy

import (
	"log/slog"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Replies to a refused SMTP AUTH exchange (RFC 4954 §6).
var (
	errSMTPSASLMalformed = &smtp.SMTPError{
		Code:         501,
		EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message:      "Malformed authentication response",
	}
	errSMTPSASLAuthzid = &smtp.SMTPError{
		Code:         535,
		EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message:      "Cannot authorize as another user",
	}
)

// smtpSASLServer adapts a shared SASL server to go-smtp, which sends an
// error other than *smtp.SMTPError as a 454 with its text: a refusal gets
// its SMTP reply and its log line here.
type smtpSASLServer struct {
	sasl.Server
	mech string
	log  *slog.Logger
}

func (s *smtpSASLServer) Next(response []byte) (challenge []byte, done bool, err error) {
	challenge, done, err = s.Server.Next(response)
	if r, ok := err.(*SASLRefusal); ok {
		LogSASLRefusal(s.log, s.mech, r)
		if r.Authzid {
			return nil, true, errSMTPSASLAuthzid
		}
		return nil, true, errSMTPSASLMalformed
	}
	return challenge, done, err
}
