package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/BurntSushi/toml"
)

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		// An *Error, like every other problem with the file, so that
		// callers can tell a configuration problem from others.
		msg := err.Error()
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Path == path {
			msg = pe.Err.Error()
		}
		return nil, &Error{File: path, Msg: msg, err: err}
	}
	return Parse(data, path)
}

// Parse validates a configuration. path names the file in error messages,
// and relative file names in the configuration are resolved against its
// directory.
func Parse(data []byte, path string) (*Config, error) {
	var raw rawConfig
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		return nil, decodeError(path, err)
	}
	v := newValidator(path, data, &md)
	cfg := v.config(&raw)
	if err := v.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// The raw structs mirror the file. Their leaves are text and texts, which
// accept any TOML value so that a wrong type is reported by validation, with
// the indexed key and its line, rather than by the decoder, which stops at
// the first problem and only knows the position of a repeated table's last
// occurrence.
type rawConfig struct {
	StateDir      text         `toml:"state_dir"`
	ControlSocket text         `toml:"control_socket"`
	LogLevel      text         `toml:"log_level"`
	Limits        *rawLimits   `toml:"limits"`
	IMAP          *rawIMAP     `toml:"imap"`
	SMTP          *rawSMTP     `toml:"smtp"`
	POP3          *rawPOP3     `toml:"pop3"`
	Metrics       *rawMetrics  `toml:"metrics"`
	Apps          []rawApp     `toml:"app"`
	Accounts      []rawAccount `toml:"account"`
}

type rawListener struct {
	Listen         texts `toml:"listen"`
	ListenTLS      texts `toml:"listen_tls"`
	Upstream       text  `toml:"upstream"`
	UpstreamCAFile text  `toml:"upstream_ca_file"`
	TLSCertFile    text  `toml:"tls_cert_file"`
	TLSKeyFile     text  `toml:"tls_key_file"`
}

type rawLimits struct {
	MaxConnections          number `toml:"max_connections"`
	MaxConnectionsPerSource number `toml:"max_connections_per_source"`
	PreAuthTimeout          text   `toml:"pre_auth_timeout"`
	DrainTimeout            text   `toml:"drain_timeout"`
}

type rawIMAP struct {
	rawListener
	MaxConnectionsPerMailbox number `toml:"max_connections_per_mailbox"`
	ConnectionWait           text   `toml:"connection_wait"`
	WarmConnections          number `toml:"warm_connections"`
}

type rawSMTP struct {
	rawListener
	AllowUnauthenticatedAs   text   `toml:"allow_unauthenticated_as"`
	MaxConnectionsPerMailbox number `toml:"max_connections_per_mailbox"`
	ConnectionWait           text   `toml:"connection_wait"`
	ReuseIdleTimeout         text   `toml:"reuse_idle_timeout"`
	rawGraph
}

type rawApp struct {
	Name                  text `toml:"name"`
	Tenant                text `toml:"tenant"`
	ClientID              text `toml:"client_id"`
	ClientSecretFile      text `toml:"client_secret_file"`
	ClientSecretExpires   date `toml:"client_secret_expires"`
	ClientCertificateFile text `toml:"client_certificate_file"`
	ClientKeyFile         text `toml:"client_key_file"`
	RedirectURI           text `toml:"redirect_uri"`
	Cloud                 text `toml:"cloud"`
	Authority             text `toml:"authority"`
}

type rawAccount struct {
	Mailbox   text  `toml:"mailbox"`
	Login     text  `toml:"login"`
	LoginUser text  `toml:"login_user"`
	App       text  `toml:"app"`
	Flow      text  `toml:"flow"`
	Scopes    texts `toml:"scopes"`
	SMTPVia   text  `toml:"smtp_via"`
}

// text is a string setting. wrongType is the TOML type found instead of a
// string, "" when the value is a string.
type text struct {
	set       bool
	s         string
	wrongType string
}

func (t *text) UnmarshalTOML(v any) error {
	t.set = true
	s, ok := v.(string)
	if !ok {
		t.wrongType = tomlType(v)
	}
	t.s = s
	return nil
}

// date is a day or an instant, written as a TOML date or date-time or as a
// string in either form.
type date struct {
	set bool
	t   time.Time
	// bad is what was found instead: a TOML type or an unparsable string.
	bad string
}

func (d *date) UnmarshalTOML(v any) error {
	d.set = true
	switch v := v.(type) {
	case time.Time:
		d.t = v
	case string:
		for _, layout := range []string{time.DateOnly, time.RFC3339} {
			if t, err := time.Parse(layout, v); err == nil {
				d.t = t
				return nil
			}
		}
		d.bad = fmt.Sprintf("%q", v)
	default:
		d.bad = tomlType(v)
	}
	return nil
}

// number is an integer setting.
type number struct {
	set       bool
	n         int64
	wrongType string
}

func (n *number) UnmarshalTOML(v any) error {
	n.set = true
	i, ok := v.(int64)
	if !ok {
		n.wrongType = tomlType(v)
	}
	n.n = i
	return nil
}

// texts is a setting holding an array of strings.
type texts struct {
	set       bool
	list      []string
	wrongType string
}

func (t *texts) UnmarshalTOML(v any) error {
	t.set = true
	arr, ok := v.([]any)
	if !ok {
		t.wrongType = tomlType(v)
		return nil
	}
	t.list = make([]string, 0, len(arr))
	for _, e := range arr {
		s, ok := e.(string)
		if !ok {
			t.list = nil
			t.wrongType = "array containing " + tomlType(e)
			return nil
		}
		t.list = append(t.list, s)
	}
	return nil
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case []any, []map[string]any:
		return "array"
	case map[string]any:
		return "table"
	}
	return "date or time"
}

// The decoder reports a table of the wrong type (imap = 1) in this form.
var decodeErrorPattern = regexp.MustCompile(`^toml: line (\d+) \(last key "(.*)"\): (.*)$`)

func decodeError(path string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Error{File: path, Line: pe.Position.Line, Msg: pe.Message}
	}
	if m := decodeErrorPattern.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: path, Line: line, Key: m[2], Msg: m[3]}
	}
	return &Error{File: path, Msg: err.Error()}
}
