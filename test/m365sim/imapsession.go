package m365sim

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// Exchange's answers with basic authentication disabled.
var (
	errAuthenticateFailed = &imap.Error{Type: imap.StatusResponseTypeNo, Text: "AUTHENTICATE failed."}
	errLoginFailed        = &imap.Error{Type: imap.StatusResponseTypeNo, Text: "LOGIN failed."}
)

// session is one IMAP connection. The embedded UserSession is nil until
// AUTHENTICATE succeeds; imapserver calls its methods only after that.
type session struct {
	*imapmemserver.UserSession
	imap      *IMAP
	conn      *imapserver.Conn
	expiry    *time.Timer
	closeOnce sync.Once
}

var _ imapserver.SessionSASL = (*session)(nil)

func (x *session) Close() error {
	x.closeOnce.Do(func() {
		if x.expiry != nil {
			x.expiry.Stop()
		}
		x.imap.sessionClosed()
	})
	return x.UserSession.Close()
}

func (x *session) Login(username, password string) error {
	x.imap.authFailed(errors.New("m365sim: LOGIN with basic authentication is disabled"))
	return errLoginFailed
}

func (x *session) AuthenticateMechanisms() []string { return []string{xoauth2.Mechanism} }

func (x *session) Authenticate(mech string) (sasl.Server, error) {
	switch strings.ToUpper(mech) {
	case xoauth2.Mechanism:
		return imapErrors{xoauth2.NewServer(x.authenticate, nil), x.imap}, nil
	case "PLAIN":
		// Exchange still takes PLAIN credentials, then refuses them.
		return imapErrors{refuse{x.imap}, x.imap}, nil
	}
	x.imap.authFailed(errors.New("m365sim: unsupported mechanism " + mech))
	return nil, errAuthenticateFailed
}

// authenticate checks an XOAUTH2 login as Exchange Online does and opens
// the mailbox. Like Exchange, it ends the session when the token expires.
func (x *session) authenticate(mailbox, token string) error {
	e := x.imap.e
	c, err := e.ValidateToken(token)
	if err != nil {
		return x.fail(err)
	}
	role := "IMAP.AccessAsUser.All"
	if c.IDType == "app" {
		role = "IMAP.AccessAsApp"
	}
	if err := e.MayAccess(c, mailbox, role); err != nil {
		return x.fail(err)
	}
	if err := x.imap.checkEnabled(mailbox); err != nil {
		return x.fail(err)
	}
	u := x.imap.user(mailbox)
	if u == nil {
		return x.fail(ErrUnknownMailbox)
	}
	x.UserSession = imapmemserver.NewUserSession(u)
	x.imap.logins.Add(1)
	// The timer runs on real time: a test's fake clock only sets the span.
	x.expiry = time.AfterFunc(c.ExpiresAt.Sub(e.now()), func() {
		x.conn.Bye("Session invalidated - AccessTokenExpired")
	})
	return nil
}

func (x *session) fail(err error) error {
	x.imap.authFailed(err)
	return errAuthenticateFailed
}

// imapErrors turns any final SASL error into Exchange's NO: imapserver
// would answer other errors with NO [SERVERBUG]. It also sends an empty
// challenge as "+ ", as Exchange does, not as "+ =".
type imapErrors struct {
	sasl.Server
	imap *IMAP
}

func (s imapErrors) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := s.Server.Next(response)
	var imapErr *imap.Error
	if err != nil && !errors.As(err, &imapErr) {
		s.imap.authFailed(err)
		err = errAuthenticateFailed
	}
	if len(challenge) == 0 {
		challenge = nil
	}
	return challenge, done, err
}

// refuse reads one response (asking for it if none came) and fails.
type refuse struct{ imap *IMAP }

func (r refuse) Next(response []byte) ([]byte, bool, error) {
	if response == nil {
		return []byte{}, false, nil
	}
	r.imap.authFailed(errors.New("m365sim: AUTHENTICATE PLAIN with basic authentication is disabled"))
	return nil, true, errAuthenticateFailed
}

// idleRecheck bounds how late an update can reach an idling client:
// imapserver's tracker misses updates queued between its "+ idling" and the
// moment it starts listening, so Idle polls again this often.
const idleRecheck = time.Second

func (x *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	for {
		if err := x.UserSession.Poll(w, true); err != nil {
			return err
		}
		wake := make(chan struct{})
		go func() {
			select {
			case <-stop:
			case <-time.After(idleRecheck):
			}
			close(wake)
		}()
		if err := x.UserSession.Idle(w, wake); err != nil {
			return err
		}
		select {
		case <-stop:
			return nil
		case <-wake:
		default:
			// No mailbox selected: UserSession.Idle returns at once.
			<-stop
			return nil
		}
	}
}
