package smtp

import (
	"strings"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
)

func TestExplainRefusal(t *testing.T) {
	disabled := &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 139}, Message: "SmtpClientAuthentication is disabled for the Mailbox."}
	if advice, temporary, ok := ExplainRefusal(disabled); !ok || temporary || !strings.Contains(advice, "SmtpClientAuthenticationDisabled $false") {
		t.Errorf("5.7.139: %q %v %v", advice, temporary, ok)
	}
	busy := &gosmtp.SMTPError{Code: 432, EnhancedCode: gosmtp.EnhancedCode{4, 3, 2}, Message: "sender thread limit exceeded"}
	if _, temporary, ok := ExplainRefusal(busy); !ok || !temporary {
		t.Errorf("4.3.2: temporary %v ok %v", temporary, ok)
	}
	if _, _, ok := ExplainRefusal(&gosmtp.SMTPError{Code: 250, Message: "OK"}); ok {
		t.Error("250 explained")
	}
}
