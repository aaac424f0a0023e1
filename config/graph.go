package config

import (
	"net/url"
	"strings"
)

// SMTPVia names the upstream of an account's SMTP submissions.
type SMTPVia string

const (
	// SMTPViaSMTP: Exchange Online's SMTP AUTH (smtp.office365.com:587).
	SMTPViaSMTP SMTPVia = "smtp"
	// SMTPViaGraph: Microsoft Graph's mail API, for tenants that keep
	// SMTP AUTH disabled.
	SMTPViaGraph SMTPVia = "graph"
)

// Graph configures the Microsoft Graph upstream of [smtp]:
//
//	[smtp]
//	smtp_via = "graph"            # default of the accounts: "smtp" or "graph"
//	# graph_url = "https://graph.microsoft.com"   # default: the account's cloud's
//	# graph_ca_file = "/path/ca.pem"              # extra roots (tests)
//	# save_to_sent_items = true
//
//	[[account]]
//	smtp_via = "smtp"             # per account
type Graph struct {
	// Via is the accounts' default (smtp_via). Default SMTPViaSMTP.
	Via SMTPVia
	// URL overrides every account's Graph service root (graph_url); ""
	// means each account's cloud's.
	URL string
	// CAFile adds trust roots for Graph (graph_ca_file).
	CAFile string
	// SaveToSentItems keeps a copy of each message in Sent Items
	// (save_to_sent_items). Default true, as SMTP AUTH submission does.
	SaveToSentItems bool
}

// rawGraph are the [smtp] keys of the Graph upstream.
type rawGraph struct {
	SMTPVia         text    `toml:"smtp_via"`
	GraphURL        text    `toml:"graph_url"`
	GraphCAFile     text    `toml:"graph_ca_file"`
	SaveToSentItems boolean `toml:"save_to_sent_items"`
}

// boolean is a true/false setting.
type boolean struct {
	set       bool
	b         bool
	wrongType string
}

func (b *boolean) UnmarshalTOML(v any) error {
	b.set = true
	x, ok := v.(bool)
	if !ok {
		b.wrongType = tomlType(v)
	}
	b.b = x
	return nil
}

// ViaGraph reports whether the account's SMTP submissions go through
// Microsoft Graph.
func (a *Account) ViaGraph() bool { return a.SMTPVia == SMTPViaGraph }

// GraphScope is the scope of the account's Microsoft Graph token for
// sending: app-only, <graph>/.default with the application permissions
// Mail.Send and Mail.ReadWrite; delegated, Mail.Send and Mail.ReadWrite
// (their .Shared forms when the signed-in user is a delegate of the
// mailbox), which the sign-in's refresh token redeems once the user or an
// administrator consented to them.
func (a *Account) GraphScope() string {
	c := a.App.Cloud
	if !a.Delegated() {
		return c.GraphScope()
	}
	shared := ""
	if a.LoginUser != "" && a.LoginUser != a.Mailbox {
		shared = ".Shared"
	}
	return "offline_access " + c.GraphResource + "/Mail.Send" + shared + " " + c.GraphResource + "/Mail.ReadWrite" + shared
}

func (v *validator) smtpVia(key string, t text) SMTPVia {
	s, ok := v.str(key, t)
	if !ok {
		return ""
	}
	switch via := SMTPVia(strings.ToLower(s)); via {
	case SMTPViaSMTP, SMTPViaGraph:
		return via
	}
	v.errorf(key, "%q is neither %q nor %q", s, SMTPViaSMTP, SMTPViaGraph)
	return ""
}

func (v *validator) bool(key string, b boolean) (bool, bool) {
	if !b.set {
		return false, false
	}
	if b.wrongType != "" {
		v.errorf(key, "must be true or false, not %s", b.wrongType)
		return false, false
	}
	return b.b, true
}

// graph validates [smtp]'s Graph keys and gives every account its
// smtp_via and, sending through Graph, its Graph URL.
func (v *validator) graph(section string, raw *rawGraph, accounts []*Account) Graph {
	g := Graph{Via: SMTPViaSMTP, SaveToSentItems: true}
	if via := v.smtpVia(section+".smtp_via", raw.SMTPVia); via != "" {
		g.Via = via
	}
	if u, ok := v.str(section+".graph_url", raw.GraphURL); ok {
		p, err := url.Parse(u)
		switch {
		case err != nil || p.Host == "" || p.Scheme != "https":
			v.errorf(section+".graph_url", "%q is not an https URL such as \"https://graph.microsoft.com\"", u)
		case p.Path != "" && p.Path != "/" || p.RawQuery != "":
			v.errorf(section+".graph_url", "%q: give the service root only, without a path (broker adds /v1.0/…)", u)
		default:
			g.URL = strings.TrimRight(u, "/")
		}
	}
	if file, ok := v.str(section+".graph_ca_file", raw.GraphCAFile); ok {
		g.CAFile = v.resolve(file)
		v.caFile(section+".graph_ca_file", g.CAFile)
	}
	if b, ok := v.bool(section+".save_to_sent_items", raw.SaveToSentItems); ok {
		g.SaveToSentItems = b
	}
	for _, a := range accounts {
		if a.SMTPVia == "" {
			a.SMTPVia = g.Via
		}
		if a.ViaGraph() {
			a.GraphURL = g.URL
			if a.GraphURL == "" && a.App != nil && a.App.Cloud != nil {
				a.GraphURL = a.App.Cloud.GraphResource
			}
		}
	}
	return g
}

// SMTPViaOf is the account's smtp_via as status shows it.
func SMTPViaOf(a *Account) string {
	if a.SMTPVia == "" {
		return string(SMTPViaSMTP)
	}
	return string(a.SMTPVia)
}
