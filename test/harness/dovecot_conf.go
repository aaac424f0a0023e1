package harness

import (
	"strings"
	"text/template"
)

// dovecotConf is the whole configuration of a private instance: nothing is
// read from /etc/dovecot.
var dovecotConf = template.Must(template.New("dovecot.conf").Parse(`# written by broker's test harness
base_dir = {{.Dir}}/run
state_dir = {{.Dir}}/state
instance_name = {{.Name}}
log_path = {{.Dir}}/dovecot.log
auth_verbose = yes

protocols = imap lmtp{{if .POP3Port}} pop3{{end}}
listen = 127.0.0.1
ssl = required
ssl_cert = <{{.Dir}}/cert.pem
ssl_key = <{{.Dir}}/key.pem
disable_plaintext_auth = yes
login_trusted_networks =

# Only XOAUTH2, like Exchange Online: with OAUTHBEARER listed too, curl
# prefers it.
auth_mechanisms = xoauth2
auth_failure_delay = 0

# auth_failure_delay = 0 still leaves failures in a queue flushed every
# 500 ms; nodelay answers at once. noauthenticate makes this passdb only
# set the field, and fields of a passdb that did not fail survive the
# failures of the next ones.
passdb {
  driver = static
  mechanisms = xoauth2
  args = nopassword noauthenticate nodelay=yes
}
# Token validation (signature, exp, nbf, iss, aud) for user and app-only
# tokens alike: sub is in every token Dovecot accepts, and a
# username_format without variables matches any user=. The claims that
# decide which mailboxes the token opens are kept for the next passdb.
passdb {
  driver = oauth2
  mechanisms = xoauth2
  args = {{.Dir}}/oauth2.conf.ext
  result_success = continue-ok
}
# Which mailbox the token may open, looked up as idtyp/upn/mailbox. It is a
# lookup, not a second oauth2 passdb keyed on a claim only one kind of token
# has: a token lacking that claim fails with "No username returned", an
# internal failure, and then Dovecot answers every refusal with
# "NO [UNAVAILABLE] Temporary authentication failure" after a delay.
passdb {
  driver = passwd-file
  mechanisms = xoauth2
  args = username_format=%{passdb:token_idtyp}/%L{passdb:token_upn}/%u {{.Dir}}/access
  skip = unauthenticated
  result_success = return-ok
  result_failure = return-fail
  result_internalfail = return-fail
}
userdb {
  driver = passwd-file
  args = {{.Dir}}/users
}

first_valid_uid = {{.UID}}
last_valid_uid = {{.UID}}
first_valid_gid = {{.GID}}
last_valid_gid = {{.GID}}
mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  separator = /
}

service imap-login {
{{- if .ReuseLogin}}
  service_count = 0
{{- end}}
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = {{.IMAPPort}}
    ssl = yes
  }
}
{{- if .POP3Port}}
service pop3-login {
{{- if .ReuseLogin}}
  service_count = 0
{{- end}}
  inet_listener pop3 {
    port = 0
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = {{.POP3Port}}
    ssl = yes
  }
}
# UIDL as Dovecot's default spells it, set so that it stays stable; DELE
# expunges at QUIT (no pop3_deleted_flag).
pop3_uidl_format = %08Xu%08Xv
{{- end}}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = {{.LMTPPort}}
  }
}
# No growing delay for repeated failures from 127.0.0.1.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service auth {
  unix_listener auth-client-ext {
    mode = 0660
{{- if .SocketUser}}
    user = {{.SocketUser}}
    group = {{.SocketUser}}
{{- end}}
  }
}
`))

type dovecotConfData struct {
	Dir, Name          string
	UID, GID           int
	IMAPPort, LMTPPort int
	POP3Port           int // 0: no POP3
	SocketUser         string
	ReuseLogin         bool
}

// oauth2Conf is the args file of the oauth2 passdb, validating JWTs
// locally. client_id is checked against aud. scope stays unset: Debian's
// 2.3.19 would then demand a "scope" claim, which Entra tokens lack (they
// carry "scp").
var oauth2Conf = template.Must(template.New("oauth2.conf.ext").Parse(`introspection_mode = local
local_validation_key_dict = fs:posix:prefix={{.Dir}}/keys/
issuers = {{.Issuers}}
{{- if .Audience}}
client_id = {{.Audience}}
{{- end}}
username_attribute = sub
username_format = any
pass_attrs = token_idtyp=%{oauth2:idtyp} token_upn=%{oauth2:upn}
`))

type oauth2ConfData struct {
	Dir, Issuers, Audience string
}

func render(t *template.Template, data any) ([]byte, error) {
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}
