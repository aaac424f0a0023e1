package m365sim

import (
	"errors"
	"fmt"
	"strings"
)

// ErrIMAPDisabled is a login to a mailbox with IMAP turned off.
var ErrIMAPDisabled = errors.New("m365sim: IMAP is disabled for the mailbox")

// SetIMAPEnabled turns IMAP on or off for mailbox, as
// Set-CASMailbox -ImapEnabled does; it is on by default. Logins to a
// mailbox with IMAP off get Exchange's "NO AUTHENTICATE failed.", like
// any other refusal.
func (s *IMAP) SetIMAPEnabled(mailbox string, enabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.disabled == nil {
		s.disabled = make(map[string]bool)
	}
	if enabled {
		delete(s.disabled, strings.ToLower(mailbox))
	} else {
		s.disabled[strings.ToLower(mailbox)] = true
	}
}

// checkEnabled returns ErrIMAPDisabled for a mailbox with IMAP off.
func (s *IMAP) checkEnabled(mailbox string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.disabled[strings.ToLower(mailbox)] {
		return fmt.Errorf("%w: %s", ErrIMAPDisabled, mailbox)
	}
	return nil
}
