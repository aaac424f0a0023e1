package m365sim

import (
	"errors"
	"log"
	"net"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// errMessageGone: a message of the POP3 listing was expunged meanwhile
// (by an IMAP session or another POP3 session's QUIT).
var errMessageGone = errors.New("m365sim: message no longer in the mailbox")

// mailStore gives POP3 sessions the mailboxes of an IMAP simulator. The
// in-memory store shows message contents only through the IMAP protocol,
// so POP3 speaks IMAP to a private server over in-memory pipes: what it
// reads, flags and expunges is what IMAP sessions see, and they are told
// of it as of any other session's changes.
type mailStore struct {
	imap   *IMAP
	secret string // the LOGIN password of the private server
	ln     *pipeListener
	srv    *imapserver.Server
	served chan struct{}
}

func newMailStore(m *IMAP) *mailStore {
	st := &mailStore{imap: m, secret: randomString(32), ln: newPipeListener(), served: make(chan struct{})}
	st.srv = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &storeSession{st: st}, nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}},
		InsecureAuth: true, // a pipe within the process
		Logger:       log.New(log.Writer(), "m365sim pop3 store: ", log.LstdFlags),
	})
	go func() {
		defer close(st.served)
		st.srv.Serve(st.ln)
	}()
	return st
}

// close ends the private server. Its listener is closed first: Close
// racing with a Serve that has not started yet upsets imapserver's
// WaitGroup.
func (st *mailStore) close() {
	st.ln.Close()
	<-st.served
	st.srv.Close()
}

// storeSession is a session of the private server: LOGIN with the secret
// opens any mailbox of the IMAP simulator.
type storeSession struct {
	*imapmemserver.UserSession
	st *mailStore
}

func (x *storeSession) Login(username, password string) error {
	u := x.st.imap.user(username)
	if password != x.st.secret || u == nil {
		return imapserver.ErrAuthFailed
	}
	x.UserSession = imapmemserver.NewUserSession(u)
	return nil
}

func (x *storeSession) Close() error { return x.UserSession.Close() }

// storedMessage is a message of INBOX as POP3 lists it.
type storedMessage struct {
	uid  imap.UID
	size int64
}

// inbox is one open connection to a mailbox's INBOX.
type inbox struct {
	c           *imapclient.Client
	uidValidity uint32
}

func (st *mailStore) open(mailbox string) (*inbox, error) {
	conn, err := st.ln.dial()
	if err != nil {
		return nil, err
	}
	c := imapclient.New(conn, nil)
	if err := c.Login(mailbox, st.secret).Wait(); err != nil {
		c.Close()
		return nil, ErrUnknownMailbox
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		c.Close()
		return nil, err
	}
	return &inbox{c: c, uidValidity: sel.UIDValidity}, nil
}

func (b *inbox) close() { b.c.Close() }

// list returns the messages in INBOX, oldest first.
func (b *inbox) list() ([]storedMessage, error) {
	all := imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}} // 1:*
	msgs, err := b.c.Fetch(all, &imap.FetchOptions{UID: true, RFC822Size: true}).Collect()
	if err != nil {
		return nil, err
	}
	out := make([]storedMessage, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, storedMessage{uid: m.UID, size: m.RFC822Size})
	}
	return out, nil
}

// body returns a message whole. Unless peek, the message is marked \Seen,
// as Exchange does for RETR.
func (b *inbox) body(uid imap.UID, peek bool) ([]byte, error) {
	section := &imap.FetchItemBodySection{Peek: peek}
	msgs, err := b.c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		return nil, err
	}
	if len(msgs) == 0 {
		return nil, errMessageGone
	}
	data := msgs[0].FindBodySection(section)
	if data == nil {
		return nil, errMessageGone
	}
	return data, nil
}

// remove expunges messages, leaving others flagged \Deleted by IMAP
// clients alone.
func (b *inbox) remove(uids []imap.UID) error {
	if len(uids) == 0 {
		return nil
	}
	set := imap.UIDSetNum(uids...)
	flags := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}
	if err := b.c.Store(set, flags, nil).Close(); err != nil {
		return err
	}
	return b.c.UIDExpunge(set).Close()
}

// pipeListener is a net.Listener whose connections are net.Pipes made by
// dial.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial() (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.closed:
		client.Close()
		server.Close()
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pop3-store" }
