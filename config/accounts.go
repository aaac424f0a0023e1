package config

import (
	"fmt"
	"slices"
	"strings"
)

func (v *validator) accounts(raws []rawAccount, apps []*App) []*Account {
	var accounts []*Account
	mailboxes := map[string]string{} // mailbox -> key of its account
	logins := map[string]string{}    // login -> key of its account
	secretChecked := map[*App]bool{}
	signIns := map[string]*signIn{} // app name and login user -> first account
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
		acct.Flow = DefaultFlow
		if flow, ok := v.str(key+".flow", raw.Flow); ok {
			acct.Flow = Flow(flow)
			if err := checkFlow(acct.Flow); err != nil {
				v.errorf(key+".flow", "%v", err)
			}
		}
		if user, ok := v.str(key+".login_user", raw.LoginUser); ok {
			if acct.Flow == FlowClientCredentials {
				v.errorf(key+".login_user", "no user signs in with flow %s: remove login_user, or choose a delegated flow", FlowClientCredentials)
			} else if err := checkMailbox(strings.ToLower(user)); err != nil {
				v.errorf(key+".login_user", "%v", err)
			}
			acct.LoginUser = strings.ToLower(user)
		} else if acct.Flow != FlowClientCredentials {
			acct.LoginUser = acct.Mailbox
		}
		if scopes, ok := v.list(key+".scopes", raw.Scopes); ok {
			v.checkScopes(key+".scopes", acct.Flow, scopes)
			acct.Scopes = scopes
		} else if acct.App != nil && acct.App.Cloud != nil {
			acct.Scopes = AccountScopes(acct.Flow, acct.App.Cloud, v.hasPOP3)
		}
		if acct.App != nil && acct.Flow == FlowClientCredentials && !secretChecked[acct.App] {
			secretChecked[acct.App] = true
			v.requireSecret(apps, acct.App, fmt.Sprintf("%s (%s)", key, acct.Mailbox))
		}
		acct.SMTPVia = v.smtpVia(key+".smtp_via", raw.SMTPVia)
		v.sameSignIn(key, acct, signIns)
		accounts = append(accounts, acct)
	}
	return accounts
}

// sameSignIn checks that accounts sharing a sign-in (app and login user)
// agree on how it is made, since they share its refresh token.
func (v *validator) sameSignIn(key string, acct *Account, signIns map[string]*signIn) {
	if acct.App == nil || acct.LoginUser == "" {
		return
	}
	id := acct.App.Name + "\x00" + acct.LoginUser
	first := signIns[id]
	if first == nil {
		signIns[id] = &signIn{key: key, acct: acct}
		return
	}
	switch {
	case first.acct.Flow != acct.Flow:
		v.errorf(key+".flow", "%s signs in %s for app %q with flow %s already; accounts sharing a sign-in share its flow", first.key, acct.LoginUser, acct.App.Name, first.acct.Flow)
	case !slices.Equal(first.acct.Scopes, acct.Scopes):
		v.errorf(key+".scopes", "%s signs in %s for app %q with scopes %v already; accounts sharing a sign-in share its scopes", first.key, acct.LoginUser, acct.App.Name, first.acct.Scopes)
	}
}

type signIn struct {
	key  string
	acct *Account
}

// checkScopes refuses scope lists Entra would refuse, before any request:
// app-only tokens take exactly one "<resource>/.default".
func (v *validator) checkScopes(key string, flow Flow, scopes []string) {
	if len(scopes) == 0 {
		v.errorf(key, "must not be empty; remove the key for the default scopes")
		return
	}
	for _, s := range scopes {
		if s == "" || strings.IndexFunc(s, isSpaceOrControl) >= 0 {
			v.errorf(key, "%q is not a scope", s)
			return
		}
	}
	if flow == FlowClientCredentials && (len(scopes) != 1 || !strings.HasSuffix(scopes[0], "/.default")) {
		v.errorf(key, "flow %s takes a single \"<resource>/.default\" scope", FlowClientCredentials)
	}
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
			v.errorf(fmt.Sprintf("app[%d].client_secret_file", i+1), "required (or client_certificate_file): %s uses flow %s", account, FlowClientCredentials)
		}
		return
	}
}

func checkFlow(f Flow) error {
	switch f {
	case FlowClientCredentials, FlowDeviceCode, FlowAuthCode, FlowPassword:
		return nil
	}
	return fmt.Errorf("unknown flow %q (known: %s, %s, %s, %s)", f, FlowDeviceCode, FlowAuthCode, FlowPassword, FlowClientCredentials)
}

func appByName(apps []*App, name string) *App {
	for _, a := range apps {
		if a.Name == name {
			return a
		}
	}
	return nil
}
