package m365sim

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// Exchange Online's SMTP replies.
var (
	errSMTPNotAuthenticated = &smtp.SMTPError{
		Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57},
		Message: "Client not authenticated to send mail. [" + smtpFrontHost + "]",
	}
	errSMTPAuthUnsuccessful = &smtp.SMTPError{
		Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3},
		Message: "Authentication unsuccessful [" + smtpFrontHost + "]",
	}
	errSMTPAuthDisabled = &smtp.SMTPError{
		Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.",
	}
	errSMTPBasicAuth = &smtp.SMTPError{
		Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, basic authentication is disabled. [" + smtpFrontHost + "]",
	}
	errSMTPUnknownMechanism = &smtp.SMTPError{
		Code: 504, EnhancedCode: smtp.EnhancedCode{5, 7, 4},
		Message: "Unrecognized authentication type [" + smtpFrontHost + "]",
	}
	errSMTPThreadLimit = &smtp.SMTPError{
		Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "STOREDRV.ClientSubmit; sender thread limit exceeded",
	}
	errSMTPSendAs = &smtp.SMTPError{
		Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60},
		Message: "SMTP; Client does not have permissions to send as this sender [" + smtpFrontHost + "]",
	}
	errSMTPRecipientNotFound = &smtp.SMTPError{
		Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10},
		Message: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
	}
	errSMTPTooManyRecipients = &smtp.SMTPError{
		Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
		Message: "Too many recipients",
	}
	errSMTPTooBig = &smtp.SMTPError{
		Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message size exceeds fixed maximum message size",
	}
	errSMTPTransient = &smtp.SMTPError{
		Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Temporary server error. Please try again later",
	}
	errSMTPShuttingDown = &smtp.SMTPError{
		Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "Service not available, closing transmission channel",
	}
)

// smtpSession is one session of go-smtp: from EHLO to the end of the
// connection, or to STARTTLS, which starts another.
type smtpSession struct {
	s    *SMTP
	conn *smtpConn

	// Guarded by s.mu: Logout can run while a BDAT's Data does.
	mailbox   string // lower case, set by a successful AUTH
	loggedOut bool

	// The envelope. go-smtp runs a BDAT's Data on its own goroutine, and
	// an RSET can reset the session meanwhile.
	mu   sync.Mutex
	from string
	to   []string
}

var _ smtp.AuthSession = (*smtpSession)(nil)

func (s *SMTP) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &smtpSession{s: s, conn: connOf(c)}, nil
}

// authenticated is the mailbox the session logged in to, or "".
func (x *smtpSession) authenticated() string {
	x.s.mu.Lock()
	defer x.s.mu.Unlock()
	return x.mailbox
}

// Logout releases the session's slot of its mailbox.
func (x *smtpSession) Logout() error {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if x.loggedOut {
		return nil
	}
	x.loggedOut = true
	if x.mailbox != "" {
		s.active[x.mailbox]--
		if s.active[x.mailbox] == 0 {
			delete(s.active, x.mailbox)
		}
		s.broadcastLocked()
	}
	return nil
}

func (x *smtpSession) AuthMechanisms() []string { return []string{sasl.Login, xoauth2.Mechanism} }

func (x *smtpSession) Auth(mech string) (sasl.Server, error) {
	switch strings.ToUpper(mech) {
	case xoauth2.Mechanism:
		if x.s.opts.ErrorChallenge {
			return smtpSASL{xoauth2.NewServer(x.authenticate, []byte(xoauth2.DefaultErrorChallenge)), x.s}, nil
		}
		return smtpSASL{directXOAUTH2(x.authenticate), x.s}, nil
	case sasl.Login:
		return smtpSASL{&refuseLogin{s: x.s}, x.s}, nil
	}
	x.s.authFailed(errors.New("m365sim: unsupported mechanism " + mech))
	return nil, errSMTPUnknownMechanism
}

// authenticate checks an XOAUTH2 login as Exchange Online does: the token
// (audience, SMTP.SendAsApp role for apps or SMTP.Send scope for users,
// FullAccess grant or own mailbox), SMTP AUTH enabled for the mailbox, and
// the mailbox's limit of concurrent sessions.
func (x *smtpSession) authenticate(mailbox, token string) error {
	s := x.s
	c, err := s.e.ValidateToken(token)
	if err != nil {
		return x.fail(err, errSMTPAuthUnsuccessful)
	}
	role := "SMTP.Send"
	if c.IDType == "app" {
		role = "SMTP.SendAsApp"
	}
	if err := s.e.MayAccess(c, mailbox, role); err != nil {
		return x.fail(err, errSMTPAuthUnsuccessful)
	}
	if s.authDisabled(mailbox) {
		return x.fail(fmt.Errorf("%w: %s", ErrSMTPAuthDisabled, mailbox), errSMTPAuthDisabled)
	}
	key := strings.ToLower(mailbox)
	s.mu.Lock()
	if n := s.active[key]; n >= s.opts.MaxConnectionsPerMailbox {
		s.lastErr = fmt.Errorf("%w: %s has %d", ErrSMTPThreadLimit, mailbox, n)
		s.mu.Unlock()
		return errSMTPThreadLimit
	}
	if x.loggedOut { // the connection ended meanwhile
		s.mu.Unlock()
		return errSMTPShuttingDown
	}
	s.active[key]++
	s.peak[key] = max(s.peak[key], s.active[key])
	x.mailbox = key
	s.broadcastLocked()
	s.mu.Unlock()
	s.logins.Add(1)
	return nil
}

// fail records why a login failed and returns what the client sees.
func (x *smtpSession) fail(reason error, reply *smtp.SMTPError) error {
	x.s.authFailed(reason)
	return reply
}

// Mail accepts only the authenticated mailbox as sender. Exchange reports
// a send-as violation after DATA; the simulator refuses MAIL FROM with the
// same reply, which ends the transaction earlier.
func (x *smtpSession) Mail(from string, opts *smtp.MailOptions) error {
	mailbox := x.authenticated()
	if mailbox == "" {
		return errSMTPNotAuthenticated
	}
	if !strings.EqualFold(from, mailbox) {
		return errSMTPSendAs
	}
	x.mu.Lock()
	x.from, x.to = from, nil
	x.mu.Unlock()
	return nil
}

// Rcpt accepts any address but those whose local part begins with
// "reject", up to MaxRecipients.
func (x *smtpSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.to) >= x.s.opts.MaxRecipients {
		return errSMTPTooManyRecipients
	}
	local, _, _ := strings.Cut(to, "@")
	if strings.HasPrefix(strings.ToLower(local), "reject") {
		return errSMTPRecipientNotFound
	}
	x.to = append(x.to, to)
	return nil
}

func (x *smtpSession) Reset() {
	x.mu.Lock()
	x.from, x.to = "", nil
	x.mu.Unlock()
}

// Data reads the message as it comes, hashing it and keeping at most
// KeepBytes (all of it when it goes to an IMAP mailbox, which keeps it
// anyway), then records it and answers as Exchange does.
func (x *smtpSession) Data(r io.Reader) error {
	s := x.s
	mailbox := x.authenticated()
	if mailbox == "" {
		return errSMTPNotAuthenticated // Mail refused already
	}
	x.mu.Lock()
	from, rcpts := x.from, slices.Clone(x.to)
	x.mu.Unlock()
	var deliver []string
	if s.opts.IMAP != nil {
		for _, to := range rcpts {
			to = strings.ToLower(to)
			if s.opts.IMAP.user(to) != nil && !slices.Contains(deliver, to) {
				deliver = append(deliver, to)
			}
		}
	}
	keepAll := len(deliver) > 0
	dropAfter, drop := s.takeDrop()

	h := sha256.New()
	var kept []byte
	keeping := true
	var size int64
	buf := make([]byte, 32<<10)
	for {
		p := buf
		if drop {
			if size >= dropAfter {
				x.conn.abort()
				return errSMTPShuttingDown // nobody reads it
			}
			p = p[:min(int64(len(p)), dropAfter-size)]
		}
		n, err := r.Read(p)
		if n > 0 {
			h.Write(p[:n])
			size += int64(n)
			if keeping && (keepAll || size <= s.opts.KeepBytes) {
				kept = append(kept, p[:n]...)
			} else {
				keeping, kept = false, nil
			}
		}
		if err == io.EOF {
			break
		}
		if errors.Is(err, smtp.ErrDataTooLarge) {
			return errSMTPTooBig
		}
		if err != nil {
			return errSMTPTransient
		}
	}
	if drop {
		x.conn.abort()
		return errSMTPShuttingDown
	}

	if hold := s.takeHold(); hold != nil {
		close(hold.held)
		select {
		case <-hold.release:
		case <-s.closing:
			return errSMTPShuttingDown
		}
	}

	for _, to := range deliver {
		if err := s.opts.IMAP.Deliver(to, kept); err != nil {
			s.srv.ErrorLog.Printf("delivering to %s: %v", to, err)
			return errSMTPTransient
		}
	}
	m := Message{
		Mailbox: mailbox,
		From:    from,
		To:      rcpts,
		Size:    size,
		QueueID: newQueueID(),
	}
	copy(m.SHA256[:], h.Sum(nil))
	if size <= s.opts.KeepBytes {
		m.Data = kept
		if m.Data == nil {
			m.Data = []byte{}
		}
	}
	s.record(m)
	// go-smtp sends an *SMTPError as it is, a 250 included: Exchange's
	// success names the queue ID.
	return &smtp.SMTPError{
		Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message: fmt.Sprintf("OK <%s@%s> [Hostname=%s]", m.QueueID, smtpHost, smtpHost),
	}
}

// newQueueID returns an ID shaped like Exchange's: the server's name and
// random upper-case hex.
func newQueueID() string {
	b := make([]byte, 14)
	rand.Read(b)
	return smtpServer + strings.ToUpper(hex.EncodeToString(b))
}

// smtpSASL makes every final SASL error an *smtp.SMTPError: go-smtp would
// send any other error's text as 454 4.7.0.
type smtpSASL struct {
	sasl.Server
	s *SMTP
}

func (s smtpSASL) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := s.Server.Next(response)
	var smtpErr *smtp.SMTPError
	if err != nil && !errors.As(err, &smtpErr) {
		s.s.authFailed(err)
		err = errSMTPAuthUnsuccessful
	}
	return challenge, done, err
}

// directXOAUTH2 is XOAUTH2 answering a failure at once, without the error
// challenge, as Exchange Online's SMTP does.
type directXOAUTH2 xoauth2.Authenticator

func (auth directXOAUTH2) Next(response []byte) ([]byte, bool, error) {
	if response == nil {
		return []byte{}, false, nil // no initial response: ask for it
	}
	user, token, err := xoauth2.ParseResponse(response)
	if err != nil {
		return nil, true, err
	}
	return nil, true, auth(user, token)
}

// refuseLogin asks for user name and password, as Exchange does, and
// refuses them: basic authentication is off.
type refuseLogin struct {
	s    *SMTP
	step int
}

func (l *refuseLogin) Next(response []byte) ([]byte, bool, error) {
	switch {
	case l.step == 0 && response == nil:
		l.step = 1
		return []byte("Username:"), false, nil
	case l.step < 2:
		l.step = 2
		return []byte("Password:"), false, nil
	}
	l.s.authFailed(ErrSMTPBasicAuth)
	return nil, true, errSMTPBasicAuth
}
