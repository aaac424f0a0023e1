package m365sim

import (
	"errors"
	"slices"
	"strings"
)

// AddDelegate gives the user delegateUPN FullAccess and SendAs to a
// mailbox of the tenant, typically a shared one, as Add-MailboxPermission
// and Add-RecipientPermission do: the delegate's token then opens it with
// XOAUTH2 user=mailbox, over IMAP and SMTP.
func (e *Entra) AddDelegate(tenantName, mailbox, delegateUPN string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.tenantLocked(tenantName)
	if t == nil {
		return errors.New("m365sim: unknown tenant " + tenantName)
	}
	if t.users[strings.ToLower(delegateUPN)] == nil {
		return errors.New("m365sim: unknown user " + delegateUPN)
	}
	mailbox, delegateUPN = strings.ToLower(mailbox), strings.ToLower(delegateUPN)
	if !slices.Contains(t.delegates[mailbox], delegateUPN) {
		t.delegates[mailbox] = append(t.delegates[mailbox], delegateUPN)
	}
	return nil
}

func (e *Entra) isDelegate(tenantID, mailbox, upn string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.tenants[tenantID]
	return t != nil && slices.Contains(t.delegates[strings.ToLower(mailbox)], strings.ToLower(upn))
}
