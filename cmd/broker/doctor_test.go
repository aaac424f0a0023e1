package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

func TestDoctorTextOutput(t *testing.T) {
	var b bytes.Buffer
	o := &textOutput{w: &b}
	o.result(pass(checkConfig, "/etc/broker/broker.toml: 1 app, 1 account"))
	o.result(warn(checkTLSIMAP, "outlook.office365.com:993: TLS 1.3, expires in 9 days", "Renew it."))
	o.account("support@contoso.com")
	o.result(fail(checkToken, "AADSTS7000215: The client secret is wrong", "Create a new secret."))
	o.result(skip(checkIMAP, "no token"))
	o.finish()
	want := `✓ config             /etc/broker/broker.toml: 1 app, 1 account
! IMAP TLS           outlook.office365.com:993: TLS 1.3, expires in 9 days
                     fix: Renew it.

support@contoso.com
✗ token              AADSTS7000215: The client secret is wrong
                     fix: Create a new secret.
– IMAP login         skipped: no token

1 check failed, 1 warning.
`
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}

	b.Reset()
	o = &textOutput{w: &b}
	o.result(pass(checkConfig, "fine"))
	o.finish()
	if !strings.HasSuffix(b.String(), "\nAll checks passed.\n") {
		t.Fatalf("got %q", b.String())
	}
}

func TestDoctorJSONOutput(t *testing.T) {
	var b bytes.Buffer
	o := &jsonOutput{w: &b}
	o.finish()
	if strings.TrimSpace(b.String()) != "[]" {
		t.Fatalf("no results: %q, want []", b.String())
	}
	b.Reset()
	o = &jsonOutput{w: &b}
	r := fail(checkPermissions, "lacks IMAP.AccessAsApp", "Add it in Entra admin center > App registrations > contoso.")
	r.Account = "support@contoso.com"
	o.result(r)
	o.result(skip(checkIMAP, "no token"))
	o.finish()
	if !strings.Contains(b.String(), "> App registrations") {
		t.Errorf("'>' escaped: %s", b.String())
	}
	var got []map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d results", len(got))
	}
	for _, key := range []string{"check", "account", "ok", "skipped", "warning", "detail", "fix"} {
		for i, r := range got {
			if _, ok := r[key]; !ok {
				t.Errorf("result %d lacks %q: %v", i, key, r)
			}
		}
	}
	if got[0]["check"] != "permissions" || got[0]["ok"] != false || got[1]["skipped"] != true {
		t.Errorf("got %v", got)
	}
}

func doctorAccount(flow config.Flow) *config.Account {
	a := &config.Account{
		Mailbox: "support@contoso.com",
		Flow:    flow,
		App:     &config.App{Name: "contoso", ClientID: "11111111-2222-3333-4444-555555555555", Cloud: config.CloudByName("global"), Authority: "https://login.microsoftonline.com"},
	}
	if a.Delegated() {
		a.LoginUser = "agent@contoso.com"
	}
	return a
}

func TestExplainTokenFailure(t *testing.T) {
	app := doctorAccount(config.FlowClientCredentials)
	deleg := doctorAccount(config.FlowDeviceCode)
	secret := &broker.TokenError{Permanent: true, Code: 7000215, TraceID: "t1", CorrelationID: "c1",
		Explanation: "The client secret is wrong — often the secret's ID was pasted instead of its Value; create a new secret in Entra admin center > App registrations > <app> > Certificates & secrets and put its Value in client_secret_file."}
	tests := []struct {
		name        string
		acct        *config.Account
		err         error
		detail, fix string
	}{
		{"local TokenError", app, fmt.Errorf("wrapped: %w", secret),
			"AADSTS7000215: The client secret is wrong", "Create a new secret in Entra admin center > App registrations > contoso >"},
		{"through the daemon", app,
			errors.New("account: account needs administrator action; see broker log: " + secret.Error()),
			"AADSTS7000215: The client secret is wrong", "Create a new secret in Entra admin center"},
		{"needs login through the daemon", deleg,
			errors.New("account: account must be signed in again by an administrator (broker login); see broker log: token request failed: The account has not been signed in yet; run broker login for it."),
			"not been signed in", "Run broker login support@contoso.com."},
		{"needs login locally", deleg,
			&broker.TokenError{Permanent: true, NeedsLogin: true, Explanation: "The refresh token expired after 90 days without use; run broker login for the account."},
			"90 days", "Run broker login support@contoso.com."},
		{"not root", app,
			errors.New("access tokens are only handed to root and the broker service's user (uid 998), not to uid 1000"),
			"uid 1000", "sudo -u broker broker doctor"},
		{"timeout", app, context.DeadlineExceeded, "deadline", "did not answer in time"},
		{"other", app, errors.New("something odd"), "something odd", "broker status support@contoso.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			detail, fix := explainTokenFailure(tt.acct, tt.err)
			if !strings.Contains(detail, tt.detail) || !strings.Contains(fix, tt.fix) {
				t.Fatalf("got detail %q fix %q, want them to contain %q and %q", detail, fix, tt.detail, tt.fix)
			}
			if strings.Contains(detail, "token request failed") || strings.Contains(detail, fix) && fix != "" && len(fix) > 40 {
				t.Errorf("detail %q repeats the prefix or the fix", detail)
			}
			if strings.Contains(fix, "<app>") {
				t.Errorf("fix %q keeps the placeholder", fix)
			}
		})
	}
}

func TestIMAPConnLine(t *testing.T) {
	in := "* 1 FETCH (BODY[] {5}\r\nhello)\r\n* OK done\r\n"
	c := &imapConn{r: bufio.NewReader(strings.NewReader(in))}
	l, err := c.line()
	if err != nil || l != "* 1 FETCH (BODY[] {5})" {
		t.Fatalf("line %q, %v", l, err)
	}
	if l, err := c.line(); err != nil || l != "* OK done" {
		t.Fatalf("line %q, %v", l, err)
	}
	for s, want := range map[string]int64{"x {12}": 12, "x {3+}": 3, "x {}": -1, "x}": -1, "x": -1} {
		n, ok := literalSize(s)
		if (want < 0) == ok || ok && n != want {
			t.Errorf("literalSize(%q) = %d, %v", s, n, ok)
		}
	}
}

func TestIMAPCommand(t *testing.T) {
	in := "+ eyJzdGF0dXMiOiI0MDEifQ==\r\nd1 NO AUTHENTICATE failed.\r\n"
	var out bytes.Buffer
	c := &imapConn{r: bufio.NewReader(strings.NewReader(in)), w: &out}
	var challenge string
	status, text, err := c.command("d1", "AUTHENTICATE XOAUTH2 abc", func(s string) { challenge = s })
	if err != nil || status != "NO" || text != "AUTHENTICATE failed." || challenge != "eyJzdGF0dXMiOiI0MDEifQ==" {
		t.Fatalf("got %q %q %v challenge %q", status, text, err, challenge)
	}
	if out.String() != "d1 AUTHENTICATE XOAUTH2 abc\r\n\r\n" {
		t.Fatalf("sent %q; want the command and an empty line for the challenge", out.String())
	}
}

// TestIMAPSMTPCrossCheck: what one protocol's login shows narrows down
// the other's refusal.
func TestIMAPSMTPCrossCheck(t *testing.T) {
	app := doctorAccount(config.FlowClientCredentials)
	deleg := doctorAccount(config.FlowDeviceCode)
	imapNo := &imapOutcome{addr: "imap:993", step: "AUTHENTICATE", status: "NO", text: "AUTHENTICATE failed."}
	notConnected := &imapOutcome{addr: "imap:993", step: "EXAMINE INBOX", status: "BAD", text: "User is authenticated but not connected."}
	imapOK := &imapOutcome{addr: "imap:993", exists: 2}
	smtpOK := &smtpOutcome{addr: "smtp:587"}
	smtp573 := &smtpOutcome{addr: "smtp:587", auth: &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}}
	smtp57139 := &smtpOutcome{addr: "smtp:587", auth: &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}}
	sendAs := &smtpOutcome{addr: "smtp:587", mail: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "Client does not have permissions to send as this sender"}}

	tests := []struct {
		name string
		r    doctorResult
		ok   bool
		fix  []string
		not  []string
	}{
		{"IMAP refused, SMTP in: IMAP disabled", imapNo.result(app, smtpOK), false,
			[]string{"IMAP is disabled for support@contoso.com", "Set-CASMailbox -Identity support@contoso.com -ImapEnabled $true"}, []string{"FullAccess"}},
		{"both refused, app-only: service principal", imapNo.result(app, smtp573), false,
			[]string{"New-ServicePrincipal -AppId 11111111-2222-3333-4444-555555555555", "Add-MailboxPermission -Identity support@contoso.com", "FullAccess"}, nil},
		{"both refused, delegated: delegate's FullAccess", imapNo.result(deleg, smtp573), false,
			[]string{"agent@contoso.com may not open support@contoso.com", "-User agent@contoso.com -AccessRights FullAccess"}, []string{"ServicePrincipal"}},
		{"IMAP refused, no SMTP: every cause", imapNo.result(app, nil), false,
			[]string{"-ImapEnabled $true", "New-ServicePrincipal", "-Identity support@contoso.com", "-User <enterprise-app-object-id>"}, []string{"<mailbox>"}},
		{"not connected: FullAccess", notConnected.result(deleg, smtpOK), false,
			[]string{"-User agent@contoso.com -AccessRights FullAccess"}, nil},
		{"IMAP in", imapOK.result(app, smtp573), true, nil, nil},
		{"SMTP AUTH disabled", smtp57139.result(app, imapOK), false,
			[]string{"Set-CASMailbox -Identity support@contoso.com -SmtpClientAuthenticationDisabled $false"}, nil},
		{"SMTP refused, IMAP refused too", smtp573.result(app, imapNo), false, []string{"FullAccess", "New-ServicePrincipal"}, nil},
		{"SMTP refused alone", smtp573.result(app, imapOK), false, []string{"SMTP.SendAsApp"}, nil},
		{"send-as refused", sendAs.result(deleg, imapOK), false,
			[]string{"Add-RecipientPermission -Identity support@contoso.com -Trustee agent@contoso.com -AccessRights SendAs"}, nil},
		{"SMTP in", smtpOK.result(app, imapNo), true, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.r.OK != tt.ok {
				t.Fatalf("ok %v, want %v: %+v", tt.r.OK, tt.ok, tt.r)
			}
			if !tt.ok && tt.r.Fix == "" {
				t.Fatalf("a failure without a fix: %+v", tt.r)
			}
			for _, s := range tt.fix {
				if !strings.Contains(tt.r.Fix, s) {
					t.Errorf("fix %q lacks %q", tt.r.Fix, s)
				}
			}
			for _, s := range tt.not {
				if strings.Contains(tt.r.Fix, s) {
					t.Errorf("fix %q has %q", tt.r.Fix, s)
				}
			}
		})
	}
}

// selfSigned makes a certificate for 127.0.0.1 valid until notAfter, and
// writes it as a CA file.
func selfSigned(t *testing.T, notAfter time.Time, hosts ...string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "doctor test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, path
}

// tlsServer accepts TLS connections with conf and completes handshakes.
func tlsServer(t *testing.T, conf *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return l.Addr().String()
}

func TestProbeTLS(t *testing.T) {
	good, goodCA := selfSigned(t, time.Now().Add(365*24*time.Hour), "127.0.0.1")
	soon, soonCA := selfSigned(t, time.Now().Add(5*24*time.Hour), "127.0.0.1")
	other, otherCA := selfSigned(t, time.Now().Add(365*24*time.Hour), "outlook.example")
	tests := []struct {
		name    string
		conf    *tls.Config
		ca      string
		ok      bool
		warning bool
		detail  string
		fix     string
	}{
		{"trusted", &tls.Config{Certificates: []tls.Certificate{good}}, goodCA, true, false, "TLS 1.3", ""},
		{"expires in 5 days", &tls.Config{Certificates: []tls.Certificate{soon}}, soonCA, true, true, "expires in 4 days", "expires soon"},
		{"not trusted", &tls.Config{Certificates: []tls.Certificate{good}}, otherCA, false, false, "unknown authority", "imap.upstream_ca_file"},
		{"other host", &tls.Config{Certificates: []tls.Certificate{other}}, otherCA, false, false, "127.0.0.1", "set imap.upstream to the name"},
		{"TLS 1.1", &tls.Config{Certificates: []tls.Certificate{good}, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, goodCA, false, false, "TLS 1.2 or later", "old TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tlsServer(t, tt.conf)
			lc := &config.Listener{Upstream: addr, UpstreamCAFile: tt.ca}
			r := probeTLS(context.Background(), target{check: checkConnectIMAP, proto: "imap", addr: addr, lc: lc, implicitTLS: true})
			if r.OK != tt.ok || r.Warning != tt.warning || !strings.Contains(r.Detail, tt.detail) || !strings.Contains(r.Fix, tt.fix) {
				t.Fatalf("got %+v\nwant ok=%v warning=%v detail ~%q fix ~%q", r, tt.ok, tt.warning, tt.detail, tt.fix)
			}
			if r.Check != checkTLSIMAP {
				t.Errorf("check %q", r.Check)
			}
		})
	}
}

func TestProbeConnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	r := probeConnect(context.Background(), target{check: checkConnectSMTP, proto: "smtp", addr: addr})
	if !r.OK || !strings.Contains(r.Detail, addr) {
		t.Fatalf("listening: %+v", r)
	}
	l.Close()
	r = probeConnect(context.Background(), target{check: checkConnectSMTP, proto: "smtp", addr: addr})
	if r.OK || !strings.Contains(r.Detail, "refused") || !strings.Contains(r.Fix, "smtp.upstream") {
		t.Fatalf("closed: %+v", r)
	}
	r = probeConnect(context.Background(), target{check: checkConnectID, proto: "identity", addr: "no-such-host.invalid:443"})
	if r.OK || !strings.Contains(r.Detail, "DNS") || !strings.Contains(r.Fix, "resolv.conf") {
		t.Fatalf("unresolvable: %+v", r)
	}
}

func TestPOP3CrossCheck(t *testing.T) {
	app := doctorAccount(config.FlowClientCredentials)
	deleg := doctorAccount(config.FlowDeviceCode)
	refused := &pop3Outcome{addr: "pop:995", step: "AUTH", text: "Authentication failure: unknown user name or bad password.",
		challenge: `{"status":"401","schemes":"bearer","scope":"https://outlook.office.com/.default"}`}
	popOK := &pop3Outcome{addr: "pop:995", stat: "2 4096"}
	imapNo := &imapOutcome{addr: "imap:993", step: "AUTHENTICATE", status: "NO", text: "AUTHENTICATE failed."}
	imapOK := &imapOutcome{addr: "imap:993", exists: 2}
	smtpOK := &smtpOutcome{addr: "smtp:587"}
	tempFail := &pop3Outcome{addr: "pop:995", step: "AUTH", text: "[SYS/TEMP] Server Unavailable. 21"}
	tests := []struct {
		name    string
		r       doctorResult
		ok      bool
		warning bool
		detail  []string
		fix     []string
	}{
		{"POP in", popOK.result(app, imapNo, nil), true, false, []string{"XOAUTH2 login as support@contoso.com, 2 messages (4096 bytes)"}, nil},
		{"POP refused, IMAP in: POP disabled", refused.result(app, imapOK, nil), false, false,
			[]string{"answered AUTH: -ERR Authentication failure", "challenge"},
			[]string{"POP is disabled for support@contoso.com (IMAP takes", "Set-CASMailbox -Identity support@contoso.com -PopEnabled $true"}},
		{"POP refused, SMTP in: POP disabled", refused.result(app, nil, smtpOK), false, false, nil, []string{"(SMTP AUTH takes", "-PopEnabled $true"}},
		{"both refused, delegated: FullAccess", refused.result(deleg, imapNo, nil), false, false, nil,
			[]string{"-User agent@contoso.com -AccessRights FullAccess"}},
		{"POP refused alone: every cause", refused.result(app, nil, nil), false, false, nil,
			[]string{"POP.AccessAsApp", "-PopEnabled $true", "-Identity support@contoso.com"}},
		{"temporary", tempFail.result(app, imapOK, nil), true, true, nil, []string{"run broker doctor again later"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.r.Check != checkPOP3 || tt.r.OK != tt.ok || tt.r.Warning != tt.warning {
				t.Fatalf("got %+v, want ok %v warning %v", tt.r, tt.ok, tt.warning)
			}
			for _, s := range tt.detail {
				if !strings.Contains(tt.r.Detail, s) {
					t.Errorf("detail %q lacks %q", tt.r.Detail, s)
				}
			}
			for _, s := range tt.fix {
				if !strings.Contains(tt.r.Fix, s) {
					t.Errorf("fix %q lacks %q", tt.r.Fix, s)
				}
			}
		})
	}
}
