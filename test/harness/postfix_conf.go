package harness

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/template"
)

// postfixMainCf is the main.cf of a private instance: its files are all
// under Dir, and /etc/postfix's main.cf and master.cf are not read.
var postfixMainCf = template.Must(template.New("main.cf").Parse(`# written by broker's test harness
compatibility_level = 3.6
queue_directory = {{.Dir}}/queue
data_directory = {{.Dir}}/data
maillog_file = {{.Dir}}/maillog
maillog_file_prefixes = {{.Dir}}
myhostname = {{.Hostname}}
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
biff = no

# Nothing is local: every address is a virtual mailbox in Dovecot.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
virtual_mailbox_domains = {{.Domains}}
virtual_mailbox_maps = texthash:{{.Dir}}/conf/mailboxes
virtual_transport = lmtp:inet:{{.LMTPAddr}}
# No relaying: whatever is not a virtual mailbox is refused at RCPT, and
# nothing ever looks for another MX.
smtpd_relay_restrictions = reject_unauth_destination
default_transport = error:5.7.1 the test harness delivers only to its Dovecot
relay_transport = $default_transport

# Submission like smtp.office365.com:587: STARTTLS before anything else,
# AUTH only after it, XOAUTH2 checked by Dovecot.
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_tls_chain_files = {{.Dir}}/conf/key.pem, {{.Dir}}/conf/cert.pem
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_loglevel = 1
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {{.AuthSocket}}
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = $smtpd_sasl_security_options
smtpd_sender_login_maps = texthash:{{.Dir}}/conf/senders
smtpd_sender_restrictions = reject_sender_login_mismatch
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
message_size_limit = {{.MessageSizeLimit}}
mailbox_size_limit = 0
virtual_mailbox_limit = 0
# An XOAUTH2 response holds a whole JWT, and Entra's run to several KB:
# AUTH with an initial response longer than line_length_limit (default
# 2048) fails as invalid base64.
line_length_limit = 16384
smtpd_sasl_response_limit = 16384

# What the client sends is what Dovecot stores, behind the trace headers:
# no header rewriting for clients on 127.0.0.1.
local_header_rewrite_clients =
# Tests make errors on purpose; Postfix would otherwise slow down after ten.
smtpd_error_sleep_time = 0
`))

// postfixMasterCf runs every service unchrooted: smtpd reaches Dovecot's
// auth socket and the files under Dir by their real paths.
var postfixMasterCf = template.Must(template.New("master.cf").Parse(`# written by broker's test harness
{{.SubmissionAddr}} inet n - n - - smtpd
  -o syslog_name=postfix/submission
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`))

type postfixConfData struct {
	Dir, Hostname    string
	Domains          string
	LMTPAddr         string
	AuthSocket       string
	MessageSizeLimit int64
	SubmissionAddr   string
}

// postfixHostname is myhostname: the greeting and Received headers name it.
const postfixHostname = "smtp.harness.test"

// postfixMaps returns the texthash maps of virtual mailboxes and of sender
// owners (smtpd_sender_login_maps is keyed by sender, SenderLogins by login).
func postfixMaps(mailboxes []string, senderLogins map[string][]string) (boxes, senders []byte, err error) {
	var b strings.Builder
	for _, m := range mailboxes {
		fmt.Fprintf(&b, "%s OK\n", m)
	}
	if senderLogins == nil {
		senderLogins = make(map[string][]string, len(mailboxes))
		for _, m := range mailboxes {
			senderLogins[m] = []string{m}
		}
	}
	owners := make(map[string][]string)
	for login, addrs := range senderLogins {
		login = strings.ToLower(login)
		if err := checkMapWord(login); err != nil {
			return nil, nil, fmt.Errorf("SenderLogins: %w", err)
		}
		for _, a := range addrs {
			a = strings.ToLower(a)
			if err := checkMapWord(a); err != nil {
				return nil, nil, fmt.Errorf("SenderLogins[%q]: %w", login, err)
			}
			owners[a] = append(owners[a], login)
		}
	}
	var s strings.Builder
	for _, a := range slices.Sorted(maps.Keys(owners)) {
		logins := owners[a]
		slices.Sort(logins)
		fmt.Fprintf(&s, "%s %s\n", a, strings.Join(slices.Compact(logins), ","))
	}
	return []byte(b.String()), []byte(s.String()), nil
}

// checkMapWord refuses what would break a line of a texthash map.
func checkMapWord(s string) error {
	if s == "" || strings.ContainsAny(s, " \t\r\n,#") {
		return fmt.Errorf("invalid address %q", s)
	}
	return nil
}

// mailboxDomains returns the distinct domains of mailboxes, in order.
func mailboxDomains(mailboxes []string) []string {
	var domains []string
	for _, m := range mailboxes {
		if _, d, ok := strings.Cut(m, "@"); ok && !slices.Contains(domains, d) {
			domains = append(domains, d)
		}
	}
	return domains
}
