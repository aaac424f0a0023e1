package m365sim

import (
	"errors"
	"html/template"
	"net/http"
	"strings"
)

var deviceLoginPage = template.Must(template.New("").Parse(`<!DOCTYPE html>
<html><head><title>m365sim device login</title></head><body>
<h1>Enter code</h1>
{{if .}}<p>{{.}}</p>{{end}}
<form method="post">
<p><label>Code <input name="code" autofocus></label></p>
<p><label>User <input name="username" type="email"></label></p>
<p><label>Password <input name="password" type="password"></label></p>
<p><button>Sign in</button> <button name="decline" value="1">Decline</button></p>
</form></body></html>
`))

// handleDeviceLogin is the verification page, so that a person can
// complete a device login against `broker serve -dev`.
func (e *Entra) handleDeviceLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if r.Method != http.MethodPost {
		deviceLoginPage.Execute(w, "")
		return
	}
	r.ParseForm()
	code := r.PostForm.Get("code")
	if r.PostForm.Get("decline") != "" {
		if err := e.DeclineDeviceCode(code); err != nil {
			deviceLoginPage.Execute(w, err.Error())
			return
		}
		deviceLoginPage.Execute(w, "Declined.")
		return
	}
	username, password := r.PostForm.Get("username"), r.PostForm.Get("password")
	err := e.decideDevice(code, func(t *tenant, d *deviceAuth) error {
		u := t.users[strings.ToLower(username)]
		if u == nil || !equalSecret(u.Password, password) {
			return errors.New("your account or password is incorrect")
		}
		if f := u.interactiveFailure(); f != nil {
			return signInError(f)
		}
		d.user, d.amr = u, u.amr()
		return nil
	})
	if err != nil {
		deviceLoginPage.Execute(w, err.Error())
		return
	}
	deviceLoginPage.Execute(w, "You have signed in. You may now close this window.")
}
