package smtp

import (
	"context"
	"io"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/mailbroker/broker/proxy"
)

// Upstream is one authenticated upstream connection of a session, through
// which the session relays each mail transaction command by command. Today
// the only kind is the SMTP relay (relay.go); another, such as Microsoft
// Graph's sendMail, goes next to it behind the same interface.
//
// An error that is a *gosmtp.SMTPError is upstream's reply: the session
// passes it to the client unchanged (a 421 ends the session too). Any other
// error means the connection failed: the session drops it (Close) and
// answers 451, so that the client keeps its message.
type Upstream interface {
	// Mail starts a transaction (RFC 5321 §4.1.1.2).
	Mail(from string, opts *gosmtp.MailOptions) error
	// Rcpt adds a recipient (RFC 5321 §4.1.1.3).
	Rcpt(to string, opts *gosmtp.RcptOptions) error
	// Data starts the message (RFC 5321 §4.1.1.4): upstream's go-ahead,
	// or its refusal.
	Data() (MessageWriter, error)
	// Reset ends the transaction (RFC 5321 §4.1.1.5).
	Reset() error
	// Quit ends the connection politely, within a short bound (RFC 5321
	// §4.1.1.10).
	Quit()
	// Close drops the connection at once: a message whose data was not
	// finished is discarded, never delivered. It may be called more than
	// once, and after Quit.
	Close()
}

// MessageWriter takes the message data of one transaction: the client's
// bytes as they come, without dot-stuffing. Each Write is bounded by
// Options.CommandTimeout. One that can take the data as it goes on the
// wire, dot-stuffed, is also a wireWriter, and then gets it that way when
// the session reads the data itself (wire.go).
type MessageWriter interface {
	io.Writer
	// Close ends the message and returns upstream's final reply text on
	// success, e.g. "2.0.0 OK <queue id> [Hostname=...]": the client's 250
	// carries it (RFC 5321 §4.2). Until Close returns with no error, the
	// message is not accepted.
	Close() (reply string, err error)
}

// A MessageWriter may also have a method LogAttrs() []any, called after
// Close: attributes that the session's log line about the message
// carries, such as the upstream's own id of the message.

// Dialer opens the upstream connection of a login: it connects and
// authenticates with up.SASL. It may choose the kind of upstream per login
// from up, the Authenticator's answer (an account whose mail goes through
// Microsoft Graph rather than SMTP). Whatever Dial opens it attaches to c,
// so that closing the session closes it too.
//
// The server takes the mailbox's slot (Options.MaxConnectionsPerMailbox)
// around Dial, whatever the kind.
type Dialer interface {
	Dial(ctx context.Context, c *proxy.Conn, up *proxy.Upstream) (Upstream, error)
}

// slotted is an Upstream holding a slot of its mailbox until it ends.
type slotted struct {
	Upstream
	release func()
}

func (u *slotted) Quit() {
	u.Upstream.Quit()
	u.release()
}

func (u *slotted) Close() {
	u.Upstream.Close()
	u.release()
}
