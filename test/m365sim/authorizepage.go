package m365sim

import (
	"html/template"
	"net/http"
	"net/url"
	"strings"
)

var signInPage = template.Must(template.New("").Parse(`<!DOCTYPE html>
<html><head><title>m365sim sign in</title></head><body>
<h1>Sign in</h1>
{{if .Message}}<p>{{.Message}}</p>{{end}}
{{if .Query}}<form method="post">
<input type="hidden" name="request" value="{{.Query}}">
<p><label>User <input name="username" type="email" value="{{.Username}}" autofocus></label></p>
<p><label>Password <input name="password" type="password"></label></p>
<p><button>Sign in</button> <button name="cancel" value="1">Cancel</button></p>
</form>{{end}}
</body></html>
`))

type signInPageData struct {
	Message, Query, Username string
}

// handleAuthorize is the authorization endpoint for a person with a
// browser, against `broker serve -dev`: GET shows a sign-in form (or the
// error page, or redirects back with an error), and its POST signs the
// user in with a password and redirects back with a code.
func (e *Entra) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	tenantName := r.PathValue("tenant")
	rawQuery := r.URL.RawQuery
	if r.Method == http.MethodPost {
		r.ParseForm()
		rawQuery = r.PostForm.Get("request")
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		e.showSignIn(w, http.StatusBadRequest, signInPageData{Message: err.Error()})
		return
	}
	req, f := e.parseAuthorize(tenantName, q)
	if req == nil {
		e.traceHeaders(w, r)
		e.showSignIn(w, http.StatusBadRequest, signInPageData{Message: f.Description})
		return
	}
	if f == nil && r.Method != http.MethodPost {
		f = e.injectedFailure(EndpointAuthorize)
	}
	if f != nil {
		http.Redirect(w, r, e.errorRedirect(req, f), http.StatusFound)
		return
	}
	if r.Method != http.MethodPost {
		e.showSignIn(w, http.StatusOK, signInPageData{Query: rawQuery, Username: req.loginHint})
		return
	}
	if r.PostForm.Get("cancel") != "" {
		http.Redirect(w, r, e.errorRedirect(req, errConsentDeclined()), http.StatusFound)
		return
	}
	username, password := r.PostForm.Get("username"), r.PostForm.Get("password")
	u, amr, f := e.signInUser(req.tenant, username)
	if f == nil && !e.passwordMatches(u, password) {
		f = errBadPassword()
	}
	if f != nil {
		e.showSignIn(w, http.StatusOK, signInPageData{Message: f.Description, Query: rawQuery, Username: username})
		return
	}
	http.Redirect(w, r, e.issueCode(req, u, amr), http.StatusFound)
}

func (e *Entra) passwordMatches(u *user, password string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return equalSecret(u.Password, password)
}

func (e *Entra) showSignIn(w http.ResponseWriter, status int, data signInPageData) {
	data.Message = strings.TrimSpace(data.Message)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	signInPage.Execute(w, data)
}
