package config

import (
	"strings"
	"testing"
)

func TestGraphDefaults(t *testing.T) {
	dir := fixture(t)
	cfg := mustParse(t, dir, contosoApp+supportAccount+"[smtp]\n")
	g := cfg.SMTP.Graph
	if g.Via != SMTPViaSMTP || g.URL != "" || g.CAFile != "" || !g.SaveToSentItems {
		t.Fatalf("got %+v, want smtp, no URL, save to Sent Items", g)
	}
	a := cfg.Accounts[0]
	if a.SMTPVia != SMTPViaSMTP || a.ViaGraph() || a.GraphURL != "" {
		t.Fatalf("account: smtp_via %q, graph URL %q; want smtp and none", a.SMTPVia, a.GraphURL)
	}
}

func TestGraphSettings(t *testing.T) {
	dir := fixture(t)
	src := contosoApp + supportAccount +
		"[[account]]\nmailbox = \"queue@contoso.com\"\napp = \"contoso\"\nlogin_user = \"agent@contoso.com\"\nsmtp_via = \"smtp\"\n" +
		"[[account]]\nmailbox = \"agent@contoso.com\"\napp = \"contoso\"\n" +
		"[smtp]\nsmtp_via = \"graph\"\ngraph_url = \"https://127.0.0.1:8443/\"\ngraph_ca_file = \"ca.pem\"\nsave_to_sent_items = false\n"
	cfg := mustParse(t, dir, src)
	g := cfg.SMTP.Graph
	if g.Via != SMTPViaGraph || g.URL != "https://127.0.0.1:8443" || !strings.HasSuffix(g.CAFile, "/ca.pem") || g.SaveToSentItems {
		t.Fatalf("got %+v", g)
	}
	support, queue, agent := cfg.Accounts[0], cfg.Accounts[1], cfg.Accounts[2]
	if !support.ViaGraph() || support.GraphURL != "https://127.0.0.1:8443" {
		t.Fatalf("support: %q %q, want graph via the configured URL", support.SMTPVia, support.GraphURL)
	}
	if queue.ViaGraph() || queue.GraphURL != "" {
		t.Fatalf("queue: %q %q, want smtp", queue.SMTPVia, queue.GraphURL)
	}
	if got := support.GraphScope(); got != "https://graph.microsoft.com/.default" {
		t.Fatalf("app-only Graph scope %q", got)
	}
	if got := agent.GraphScope(); got != "offline_access https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite" {
		t.Fatalf("delegated Graph scope %q", got)
	}
	if got := queue.GraphScope(); !strings.Contains(got, "Mail.Send.Shared") || !strings.Contains(got, "Mail.ReadWrite.Shared") {
		t.Fatalf("a delegate's Graph scope %q, want the .Shared permissions", got)
	}
}

func TestGraphCloudURL(t *testing.T) {
	dir := fixture(t)
	src := strings.Replace(contosoApp, "[[app]]\n", "[[app]]\ncloud = \"usgovhigh\"\n", 1) + supportAccount + "[smtp]\nsmtp_via = \"graph\"\n"
	cfg := mustParse(t, dir, src)
	if got := cfg.Accounts[0].GraphURL; got != "https://graph.microsoft.us" {
		t.Fatalf("graph URL %q, want the cloud's", got)
	}
}

func TestGraphErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"[smtp]\nsmtp_via = \"ews\"\n", `smtp.smtp_via: "ews" is neither`},
		{"[smtp]\ngraph_url = \"http://graph.microsoft.com\"\n", "smtp.graph_url: \"http://graph.microsoft.com\" is not an https URL"},
		{"[smtp]\ngraph_url = \"https://graph.microsoft.com/v1.0\"\n", "without a path"},
		{"[smtp]\nsave_to_sent_items = \"yes\"\n", "smtp.save_to_sent_items: must be true or false, not string"},
		{"[smtp]\ngraph_ca_file = \"missing.pem\"\n", "smtp.graph_ca_file"},
		{strings.Replace(supportAccount, "flow =", "smtp_via = \"x\"\nflow =", 1) + "[smtp]\n", `account[1].smtp_via: "x" is neither`},
	} {
		dir := fixture(t)
		_, err := parseIn(t, dir, contosoApp+tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.src, err, tc.want)
		}
	}
}
