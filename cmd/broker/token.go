package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mailbroker/broker/config"
)

const tokenUsage = `usage: broker token [-config FILE] [-scope graph|outlook|SCOPE...] MAILBOX

Prints a current access token of MAILBOX's sign-in on standard output, for
local tools, and its expiry on standard error. -scope graph redeems the same
sign-in for Microsoft Graph (its .default scope in the app's cloud); outlook
(the default) is the account's own IMAP and SMTP token; anything else is
passed on as the scope (several separated by spaces). Tokens are cached and
refreshed like the account's own. Through the daemon, only root and the
daemon's own user get tokens; each issue is logged, without the token.

flags:
`

func tokenCmd(args []string, stdout, stderr io.Writer) error {
	fs, configPath := newCommand("token", tokenUsage, stderr)
	scope := fs.String("scope", "outlook", "graph, outlook, or the `scope` to ask for")
	acct, admin, ctx, done, err := accountCommand(fs, configPath, args)
	if err != nil {
		return err
	}
	defer done()
	tok, err := admin.AccessToken(ctx, acct.Mailbox, resolveScope(acct, *scope))
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok.AccessToken)
	fmt.Fprintf(stderr, "expires %s (%s)", stamp(tok.Expires), relative(tok.Expires, time.Now()))
	if tok.Scope != "" {
		fmt.Fprintf(stderr, "; scope %s", tok.Scope)
	}
	fmt.Fprintln(stderr)
	return nil
}

// resolveScope maps -scope's names: graph to the cloud's Microsoft Graph
// scope, outlook (or nothing) to the account's own scopes ("").
func resolveScope(acct *config.Account, scope string) string {
	scope = strings.Join(strings.Fields(scope), " ")
	switch strings.ToLower(scope) {
	case "", "outlook":
		return ""
	case "graph":
		return acct.App.Cloud.GraphScope()
	}
	return scope
}
