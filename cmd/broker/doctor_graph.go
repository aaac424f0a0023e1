package main

// broker doctor for accounts whose SMTP submissions go through Microsoft
// Graph (smtp_via = "graph"): their Graph token's permissions and a read
// of the mailbox through Graph, instead of SMTP AUTH.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

const (
	checkGraph        = "graph"
	checkGraphMailbox = "graph:mailbox"
)

func init() {
	checkLabels[checkGraph] = "Graph token"
	checkLabels[checkGraphMailbox] = "Graph mailbox"
}

// checkGraphAccount checks what sending through Graph needs: a Graph token
// with Mail.Send (and Mail.ReadWrite, for drafts: large messages and
// envelopes that differ from the header), and the mailbox reachable
// through Graph with it (no application access policy or missing licence
// in the way).
func (d *doctor) checkGraphAccount(ctx context.Context, acct *config.Account) []doctorResult {
	if d.admin == nil {
		return []doctorResult{skip(checkGraph, "neither the daemon nor the database can be used"), skip(checkGraphMailbox, "no token")}
	}
	tctx, cancel := context.WithTimeout(ctx, doctorTokenTimeout)
	defer cancel()
	it, err := d.admin.AccessToken(tctx, acct.Mailbox, acct.GraphScope())
	if err != nil {
		detail, fix := explainTokenFailure(acct, err)
		if acct.Delegated() {
			fix += " Sending through Graph needs consent to " + graphPerms(acct, true) + " for the app (a refresh token redeems any consented scope: no new broker login is needed)."
		}
		return []doctorResult{fail(checkGraph, "no Microsoft Graph token: "+detail, fix), skip(checkGraphMailbox, "no Graph token")}
	}
	c, err := broker.DecodeTokenClaims(it.AccessToken)
	if err != nil {
		return []doctorResult{warn(checkGraph, err.Error()+"; its permissions cannot be read here", ""), d.probeGraph(ctx, acct, it.AccessToken)}
	}
	granted := c.Roles
	kind := "roles"
	if acct.Delegated() {
		granted, kind = c.Scopes(), "scopes"
	}
	has := func(p string) bool {
		return slices.ContainsFunc(granted, func(g string) bool { return strings.EqualFold(g, p) })
	}
	send, rw := "Mail.Send", "Mail.ReadWrite"
	if shared := strings.Contains(acct.GraphScope(), ".Shared"); shared {
		send, rw = send+".Shared", rw+".Shared"
	}
	detail := fmt.Sprintf("aud %s; %s %s", c.Audience, kind, strings.Join(granted, " "))
	fix := graphPermissionFix(acct)
	var r doctorResult
	switch {
	case !has(send):
		r = fail(checkGraph, "the Graph token lacks "+send+" ("+detail+")", fix)
	case !has(rw):
		r = warn(checkGraph, "the Graph token lacks "+rw+": messages over 3 MB, or whose recipients differ from their header (Bcc), cannot be sent ("+detail+")", fix)
	default:
		r = pass(checkGraph, detail)
	}
	return []doctorResult{r, d.probeGraph(ctx, acct, it.AccessToken)}
}

func graphPerms(acct *config.Account, delegatedForm bool) string {
	s := acct.App.Cloud.GraphResource
	if strings.Contains(acct.GraphScope(), ".Shared") {
		return s + "/Mail.Send.Shared and " + s + "/Mail.ReadWrite.Shared"
	}
	return s + "/Mail.Send and " + s + "/Mail.ReadWrite"
}

func graphPermissionFix(acct *config.Account) string {
	app := acct.App.Name
	if !acct.Delegated() {
		return "Add the application permissions Mail.Send and Mail.ReadWrite in Entra admin center > App registrations > " + app +
			" > API permissions > Add a permission > Microsoft Graph > Application permissions, then Grant admin consent; " +
			"scope them to the mailboxes broker sends as (New-ApplicationAccessPolicy -AppId " + acct.App.ClientID +
			" -PolicyScopeGroupId <mail-enabled security group> -AccessRight RestrictAccess, or RBAC for Applications). " +
			"broker uses them with its next Graph token (within the hour)."
	}
	return "Add the delegated permissions " + graphPerms(acct, true) + " in Entra admin center > App registrations > " + app +
		" > API permissions > Add a permission > Microsoft Graph > Delegated permissions, then Grant admin consent; no new broker login is needed."
}

// probeGraph reads one message id of the mailbox's Sent Items through
// Graph: what an application access policy, a mailbox without licence or
// a wrong graph_url refuses, without sending anything.
func (d *doctor) probeGraph(ctx context.Context, acct *config.Account, token string) doctorResult {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if d.cfg.SMTP != nil && d.cfg.SMTP.Graph.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if pem, err := os.ReadFile(d.cfg.SMTP.Graph.CAFile); err == nil {
			pool.AppendCertsFromPEM(pem)
		}
		conf.RootCAs = pool
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}, Timeout: 20 * time.Second}
	defer client.CloseIdleConnections()
	u := acct.GraphURL + "/v1.0/users/" + url.PathEscape(acct.Mailbox) + "/mailFolders/sentitems/messages?%24top=1&%24select=id"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fail(checkGraphMailbox, err.Error(), "Check [smtp] graph_url.")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return fail(checkGraphMailbox, "cannot reach Microsoft Graph: "+err.Error(),
			"Check the connection to "+acct.GraphURL+" (DNS, firewall, proxy) and [smtp] graph_url and graph_ca_file.")
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return pass(checkGraphMailbox, acct.GraphURL+" serves the mailbox's Sent Items")
	}
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	json.Unmarshal(body, &eb)
	detail := fmt.Sprintf("Microsoft Graph answered %d %s: %s (request-id %s)", resp.StatusCode, eb.Error.Code,
		oneLineText(eb.Error.Message), resp.Header.Get("request-id"))
	switch {
	case eb.Error.Code == "MailboxNotEnabledForRESTAPI" || eb.Error.Code == "MailboxNotSupportedForRESTAPI":
		return fail(checkGraphMailbox, detail, "The mailbox is inactive, on-premises or has no Exchange Online licence: license it, or set smtp_via = \"smtp\" for the account.")
	case strings.Contains(eb.Error.Message, "AccessPolicy") || strings.Contains(eb.Error.Message, "RAOP"):
		return fail(checkGraphMailbox, detail, "An application access policy keeps the app out of "+acct.Mailbox+": add the mailbox to the policy's group "+
			"(Test-ApplicationAccessPolicy -Identity "+acct.Mailbox+" -AppId "+acct.App.ClientID+" shows the verdict), or scope the app with RBAC for Applications.")
	case resp.StatusCode == http.StatusForbidden:
		return warn(checkGraphMailbox, detail, "Reading needs Mail.ReadWrite (or Mail.ReadBasic), which broker also uses to find a message whose send was cut off: "+graphPermissionFix(acct))
	case resp.StatusCode == http.StatusUnauthorized:
		return fail(checkGraphMailbox, detail, "Graph refused the token: check that [smtp] graph_url is the Graph host of the app's cloud ("+acct.App.Cloud.GraphResource+").")
	case resp.StatusCode == http.StatusNotFound:
		return fail(checkGraphMailbox, detail, "Check the account's mailbox address and the app's tenant.")
	}
	return warn(checkGraphMailbox, detail, "Try again later; if it persists, see the broker log.")
}
