package config

import (
	"fmt"
	"strings"
)

func (v *validator) accounts(raws []rawAccount, apps []*App) []*Account {
	var accounts []*Account
	mailboxes := map[string]string{} // mailbox -> key of its account
	logins := map[string]string{}    // login -> key of its account
	secretChecked := map[*App]bool{}
	for i, raw := range raws {
		key := fmt.Sprintf("account[%d]", i+1)
		acct := &Account{}
		mailboxFree := false
		if mailbox, ok := v.required(key+".mailbox", raw.Mailbox); ok {
			mailbox = strings.ToLower(mailbox)
			if err := checkMailbox(mailbox); err != nil {
				v.errorf(key+".mailbox", "%v", err)
			} else if prev, dup := mailboxes[mailbox]; dup {
				v.errorf(key+".mailbox", "%q is already the mailbox of %s", mailbox, prev)
			} else if prev, dup := logins[mailbox]; dup {
				v.errorf(key+".mailbox", "%q is already the login of %s", mailbox, prev)
			} else {
				mailboxes[mailbox] = key
				mailboxFree = true
			}
			acct.Mailbox = mailbox
		}
		acct.Login = acct.Mailbox
		if login, ok := v.str(key+".login", raw.Login); ok {
			acct.Login = strings.ToLower(login)
			if err := checkLogin(acct.Login); err != nil {
				v.errorf(key+".login", "%v", err)
			} else if prev, dup := mailboxes[acct.Login]; dup && prev != key {
				v.errorf(key+".login", "%q is already the mailbox of %s", acct.Login, prev)
			} else if prev, dup := logins[acct.Login]; dup {
				v.errorf(key+".login", "%q is already the login of %s", acct.Login, prev)
			} else {
				logins[acct.Login] = key
			}
		} else if mailboxFree {
			logins[acct.Login] = key
		}
		if name, ok := v.required(key+".app", raw.App); ok {
			if acct.App = appByName(apps, name); acct.App == nil {
				v.errorf(key+".app", "no [[app]] named %q", name)
			}
		}
		if flow, ok := v.required(key+".flow", raw.Flow); ok {
			acct.Flow = Flow(flow)
			if err := checkFlow(acct.Flow); err != nil {
				v.errorf(key+".flow", "%v", err)
			}
		}
		if acct.App != nil && acct.Flow == FlowClientCredentials && !secretChecked[acct.App] {
			secretChecked[acct.App] = true
			v.requireSecret(apps, acct.App, fmt.Sprintf("%s (%s)", key, acct.Mailbox))
		}
		accounts = append(accounts, acct)
	}
	return accounts
}

// requireSecret reports an app that client credentials accounts use but
// that has no usable client secret.
func (v *validator) requireSecret(apps []*App, app *App, account string) {
	for i, a := range apps {
		if a != app {
			continue
		}
		// A file that is set but unusable has been reported already.
		if !v.secretFileSet[app] {
			v.errorf(fmt.Sprintf("app[%d].client_secret_file", i+1), "required: %s uses flow %s", account, FlowClientCredentials)
		}
		return
	}
}

func checkFlow(f Flow) error {
	switch f {
	case FlowClientCredentials:
		return nil
	case FlowDeviceCode, FlowAuthCode, FlowPassword:
		return fmt.Errorf("flow %q is not available in this version yet (supported: %s)", f, FlowClientCredentials)
	}
	return fmt.Errorf("unknown flow %q (supported: %s)", f, FlowClientCredentials)
}

func appByName(apps []*App, name string) *App {
	for _, a := range apps {
		if a.Name == name {
			return a
		}
	}
	return nil
}
