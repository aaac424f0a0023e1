package smtp

import (
	"log/slog"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
)

// Replies to a refused SMTP AUTH exchange (RFC 4954 §6).
var (
	errSASLMalformed = &gosmtp.SMTPError{
		Code:         501,
		EnhancedCode: gosmtp.EnhancedCode{5, 5, 2},
		Message:      "Malformed authentication response",
	}
	errSASLAuthzid = &gosmtp.SMTPError{
		Code:         535,
		EnhancedCode: gosmtp.EnhancedCode{5, 7, 8},
		Message:      "Cannot authorize as another user",
	}
)

// saslServer adapts a shared SASL server to go-smtp, which sends an
// error other than *gosmtp.SMTPError as a 454 with its text: a refusal gets
// its SMTP reply and its log line here.
type saslServer struct {
	sasl.Server
	mech string
	log  *slog.Logger
}

func (s *saslServer) Next(response []byte) (challenge []byte, done bool, err error) {
	challenge, done, err = s.Server.Next(response)
	if r, ok := err.(*proxy.SASLRefusal); ok {
		proxy.LogSASLRefusal(s.log, s.mech, r)
		if r.Authzid {
			return nil, true, errSASLAuthzid
		}
		return nil, true, errSASLMalformed
	}
	return challenge, done, err
}
