package m365sim

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/mailbroker/broker/proxy/xoauth2"
)

// The host Exchange names in its greeting, as UTF-16LE in base64.
const pop3Host = "SIM0PR01CA0002.NAMPRD01.PROD.OUTLOOK.COM"

// Line limits. Exchange's MaxCommandSize (Set-PopSettings) is 512 octets;
// a SASL response, which carries a token, and an AUTH command with an
// initial response may be longer, up to pop3MaxLine. A longer line ends
// the connection.
const (
	pop3MaxCommand = 512
	pop3MaxLine    = 16 << 10
)

// Exchange Online's replies.
const (
	pop3Capa        = "+OK\r\nTOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\nUSER\r\n.\r\n"
	pop3AuthOK      = "+OK User successfully authenticated."
	pop3AuthFailed  = "-ERR Authentication failure: unknown user name or bad password."
	pop3LogonFailed = "-ERR Logon failure: unknown user name or bad password."
	pop3Bye         = "+OK Microsoft Exchange Server POP3 server signing off."
	pop3BadState    = "-ERR Command is not valid in this state."
	pop3Unknown     = "-ERR Unknown command."
	pop3Protocol    = "-ERR Protocol error."
	pop3NoSuchMsg   = "-ERR The specified message is out of range."
	pop3TooLong     = "-ERR Command too long."
	pop3LineTooLong = "-ERR Line too long. Connection is closed."
	pop3BadMech     = "-ERR Unrecognized authentication type."
	pop3Cancelled   = "-ERR Authentication cancelled."
	pop3NotRemoved  = "-ERR Some deleted messages not removed."
	pop3Unavailable = "-ERR Server unavailable."
)

// greeting is Exchange's, with its server's name as UTF-16LE in base64.
func pop3Greeting() string {
	var u16 []byte
	for _, c := range []byte(pop3Host) {
		u16 = append(u16, c, 0)
	}
	return "+OK The Microsoft Exchange POP3 service is ready. [" + base64.StdEncoding.EncodeToString(u16) + "]"
}

// errLineTooLong: a line longer than pop3MaxLine.
var errLineTooLong = errors.New("m365sim: POP3 line too long")

// popMessage is one message of the session's listing.
type popMessage struct {
	storedMessage
	deleted bool
}

// pop3Session is one POP3 connection: AUTHORIZATION until a login
// succeeds, then TRANSACTION; QUIT in TRANSACTION is the UPDATE state.
type pop3Session struct {
	s    *POP3
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer

	user    string // from USER
	mailbox string // set once logged in
	inbox   *inbox
	msgs    []popMessage
}

func newPOP3Session(s *POP3, conn net.Conn) *pop3Session {
	return &pop3Session{
		s:    s,
		conn: conn,
		r:    bufio.NewReaderSize(conn, pop3MaxLine),
		w:    bufio.NewWriter(conn),
	}
}

func (x *pop3Session) serve() {
	defer func() {
		if x.inbox != nil {
			x.inbox.close()
		}
	}()
	// The TLS handshake happens with the greeting's write: bound it too.
	x.conn.SetReadDeadline(time.Now().Add(x.s.opts.PreAuthTimeout))
	x.reply(pop3Greeting())
	for {
		line, err := x.readLine()
		if errors.Is(err, errLineTooLong) {
			x.reply(pop3LineTooLong)
			return
		}
		if err != nil {
			return
		}
		if !x.command(line) {
			return
		}
	}
}

// readLine reads a line without its line end, bounded by pop3MaxLine and
// the state's timeout.
func (x *pop3Session) readLine() (string, error) {
	timeout := x.s.opts.PreAuthTimeout
	if x.inbox != nil {
		timeout = x.s.opts.IdleTimeout
	}
	x.conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := x.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	return string(line), nil
}

func (x *pop3Session) reply(line string) bool {
	x.w.WriteString(line)
	x.w.WriteString("\r\n")
	return x.w.Flush() == nil
}

// command runs one command line; false ends the connection.
func (x *pop3Session) command(line string) bool {
	verb, rest, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	args := strings.Fields(rest)
	if len(line)+2 > pop3MaxCommand && verb != "AUTH" {
		return x.reply(pop3TooLong)
	}
	switch verb {
	case "CAPA":
		if len(args) != 0 {
			return x.reply(pop3Protocol)
		}
		x.w.WriteString(pop3Capa)
		return x.w.Flush() == nil
	case "QUIT":
		if len(args) != 0 {
			return x.reply(pop3Protocol)
		}
		return x.quit()
	}
	if x.inbox == nil {
		return x.authorization(verb, args)
	}
	return x.transaction(verb, args)
}

func (x *pop3Session) authorization(verb string, args []string) bool {
	switch verb {
	case "USER":
		if len(args) != 1 {
			return x.reply(pop3Protocol)
		}
		x.user = args[0]
		return x.reply("+OK")
	case "PASS":
		if x.user == "" {
			return x.reply(pop3BadState)
		}
		x.user = ""
		x.s.authFailed(ErrPOPBasicAuth)
		return x.reply(pop3LogonFailed)
	case "AUTH":
		return x.auth(args)
	case "STAT", "LIST", "RETR", "TOP", "UIDL", "DELE", "RSET", "NOOP", "STLS", "APOP":
		return x.reply(pop3BadState)
	}
	return x.reply(pop3Unknown)
}

// auth runs AUTH PLAIN (refused, as with basic authentication disabled) or
// AUTH XOAUTH2, with the response on the AUTH line or after "+ ".
func (x *pop3Session) auth(args []string) bool {
	if len(args) == 0 || len(args) > 2 {
		return x.reply(pop3Protocol)
	}
	mech := strings.ToUpper(args[0])
	if mech != "PLAIN" && mech != xoauth2.Mechanism {
		x.s.authFailed(fmt.Errorf("m365sim: unsupported mechanism %s", args[0]))
		return x.reply(pop3BadMech)
	}
	var encoded string
	if len(args) == 2 {
		encoded = args[1]
	} else {
		if !x.reply("+ ") {
			return false
		}
		line, err := x.readLine()
		if errors.Is(err, errLineTooLong) {
			x.reply(pop3LineTooLong)
			return false
		}
		if err != nil {
			return false
		}
		encoded = line
	}
	if encoded == "*" {
		x.s.authFailed(ErrPOPCancelled)
		return x.reply(pop3Cancelled)
	}
	var resp []byte
	if encoded != "=" {
		var err error
		if resp, err = base64.StdEncoding.DecodeString(encoded); err != nil {
			x.s.authFailed(fmt.Errorf("%w: %v", xoauth2.ErrInvalidResponse, err))
			return x.reply(pop3AuthFailed)
		}
	}
	if mech == "PLAIN" {
		x.s.authFailed(ErrPOPBasicAuth)
		return x.reply(pop3AuthFailed)
	}
	user, token, err := xoauth2.ParseResponse(resp)
	if err != nil {
		x.s.authFailed(err)
		return x.reply(pop3AuthFailed)
	}
	if err := x.login(user, token); err != nil {
		x.s.authFailed(err)
		if !x.s.opts.NoErrorChallenge {
			// The error challenge; whatever the client answers, the
			// login failed.
			if !x.reply("+ " + base64.StdEncoding.EncodeToString([]byte(xoauth2.DefaultErrorChallenge))) {
				return false
			}
			if _, err := x.readLine(); err != nil {
				if errors.Is(err, errLineTooLong) {
					x.reply(pop3LineTooLong)
				}
				return false
			}
		}
		return x.reply(pop3AuthFailed)
	}
	return x.reply(pop3AuthOK)
}

// login checks an XOAUTH2 login as Exchange Online does and opens the
// mailbox, fixing the session's listing.
func (x *pop3Session) login(mailbox, token string) error {
	e := x.s.e
	c, err := e.ValidateToken(token)
	if err != nil {
		return err
	}
	role := "POP.AccessAsUser.All"
	if c.IDType == "app" {
		role = "POP.AccessAsApp"
	}
	if err := e.MayAccess(c, mailbox, role); err != nil {
		return err
	}
	if x.s.popDisabled(mailbox) {
		return fmt.Errorf("%w: %s", ErrPOPDisabled, mailbox)
	}
	if x.s.imap.user(mailbox) == nil {
		return ErrUnknownMailbox
	}
	b, err := x.s.store.open(mailbox)
	if err != nil {
		return err
	}
	list, err := b.list()
	if err != nil {
		b.close()
		return err
	}
	x.inbox, x.mailbox, x.user = b, mailbox, ""
	x.msgs = make([]popMessage, len(list))
	for i, m := range list {
		x.msgs[i].storedMessage = m
	}
	x.s.logins.Add(1)
	return nil
}

func (x *pop3Session) transaction(verb string, args []string) bool {
	switch verb {
	case "STAT":
		if len(args) != 0 {
			return x.reply(pop3Protocol)
		}
		n, size := x.stat()
		return x.reply(fmt.Sprintf("+OK %d %d", n, size))
	case "LIST", "UIDL":
		if len(args) > 1 {
			return x.reply(pop3Protocol)
		}
		item := func(i int) string {
			if verb == "LIST" {
				return fmt.Sprintf("%d %d", i+1, x.msgs[i].size)
			}
			return fmt.Sprintf("%d %s", i+1, x.uidl(x.msgs[i].uid))
		}
		if len(args) == 1 {
			i, reply := x.message(args[0])
			if reply != "" {
				return x.reply(reply)
			}
			return x.reply("+OK " + item(i))
		}
		x.w.WriteString("+OK\r\n")
		for i := range x.msgs {
			if !x.msgs[i].deleted {
				x.w.WriteString(item(i) + "\r\n")
			}
		}
		x.w.WriteString(".\r\n")
		return x.w.Flush() == nil
	case "RETR", "TOP":
		lines := -1
		switch {
		case verb == "RETR" && len(args) == 1:
		case verb == "TOP" && len(args) == 2:
			n, ok := number(args[1])
			if !ok {
				return x.reply(pop3Protocol)
			}
			lines = n
		default:
			return x.reply(pop3Protocol)
		}
		i, reply := x.message(args[0])
		if reply != "" {
			return x.reply(reply)
		}
		// RETR marks the message read, as Exchange does; TOP does not.
		data, err := x.inbox.body(x.msgs[i].uid, verb == "TOP")
		if errors.Is(err, errMessageGone) {
			return x.reply(pop3NoSuchMsg)
		}
		if err != nil {
			x.reply(pop3Unavailable)
			return false
		}
		if lines >= 0 {
			data = top(data, lines)
		}
		x.w.WriteString("+OK\r\n")
		writeDotStuffed(x.w, data)
		return x.w.Flush() == nil
	case "DELE":
		if len(args) != 1 {
			return x.reply(pop3Protocol)
		}
		i, reply := x.message(args[0])
		if reply != "" {
			return x.reply(reply)
		}
		x.msgs[i].deleted = true
		return x.reply("+OK")
	case "RSET":
		if len(args) != 0 {
			return x.reply(pop3Protocol)
		}
		for i := range x.msgs {
			x.msgs[i].deleted = false
		}
		return x.reply("+OK")
	case "NOOP":
		if len(args) != 0 {
			return x.reply(pop3Protocol)
		}
		return x.reply("+OK")
	case "USER", "PASS", "AUTH", "STLS", "APOP":
		return x.reply(pop3BadState)
	}
	return x.reply(pop3Unknown)
}

// quit ends the session; in TRANSACTION it is the UPDATE state, removing
// the messages marked for deletion.
func (x *pop3Session) quit() bool {
	if x.inbox == nil {
		x.reply(pop3Bye)
		return false
	}
	var uids []imap.UID
	for _, m := range x.msgs {
		if m.deleted {
			uids = append(uids, m.uid)
		}
	}
	if err := x.inbox.remove(uids); err != nil {
		x.reply(pop3NotRemoved)
		return false
	}
	x.s.deleted.Add(int64(len(uids)))
	x.reply(pop3Bye)
	return false
}

func (x *pop3Session) stat() (n int, size int64) {
	for _, m := range x.msgs {
		if !m.deleted {
			n++
			size += m.size
		}
	}
	return n, size
}

// message parses a message number; reply is the error to send, if any.
func (x *pop3Session) message(arg string) (i int, reply string) {
	n, ok := number(arg)
	if !ok {
		return 0, pop3Protocol
	}
	if n < 1 || n > len(x.msgs) || x.msgs[n-1].deleted {
		return 0, pop3NoSuchMsg
	}
	return n - 1, ""
}

// number parses a decimal number of at most nine digits.
func number(s string) (int, bool) {
	if s == "" || len(s) > 9 {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// uidl is a message's unique ID, stable across sessions and shaped like
// Exchange's (base64 of an item ID).
func (x *pop3Session) uidl(uid imap.UID) string {
	id := make([]byte, 0, 24)
	id = append(id, "AAQkAD"...)
	id = fmt.Appendf(id, "%08x%08x", x.inbox.uidValidity, uint32(uid))
	return base64.StdEncoding.EncodeToString(id)
}

// top returns the header of msg, the empty line and the first n lines of
// the body.
func top(msg []byte, n int) []byte {
	body := -1
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		body = i + 4
	} else if i := bytes.Index(msg, []byte("\n\n")); i >= 0 {
		body = i + 2
	}
	if body < 0 {
		return msg
	}
	end := body
	for ; n > 0 && end < len(msg); n-- {
		i := bytes.IndexByte(msg[end:], '\n')
		if i < 0 {
			end = len(msg)
			break
		}
		end += i + 1
	}
	return msg[:end]
}

// writeDotStuffed writes msg as a multi-line response: a "." starting a
// line is doubled, and the response ends with CRLF "." CRLF.
func writeDotStuffed(bw *bufio.Writer, msg []byte) {
	for len(msg) > 0 {
		line := msg
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line = msg[:i+1]
		}
		if line[0] == '.' {
			bw.WriteByte('.')
		}
		bw.Write(line)
		msg = msg[len(line):]
		if len(msg) == 0 && line[len(line)-1] != '\n' {
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString(".\r\n")
}
