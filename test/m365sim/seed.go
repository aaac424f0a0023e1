package m365sim

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// exchangeFolders are the folders of a new Exchange Online mailbox that
// IMAP shows.
var exchangeFolders = []string{"INBOX", "Archive", "Deleted Items", "Drafts", "Junk Email", "Outbox", "Sent Items"}

// seedMessage is one of the messages a new mailbox starts with.
type seedMessage struct {
	from, subject string
	date          time.Time
	seen          bool
	body          string
}

var seedMessages = []seedMessage{
	{
		from:    "Microsoft 365 Message center <o365mc@microsoft.com>",
		subject: "Welcome to your new mailbox",
		date:    time.Date(2026, 11, 18, 9, 12, 41, 0, time.UTC),
		seen:    true,
		body:    "Your mailbox is ready.\r\n",
	},
	{
		from:    "Adele Vance <adele.vance@contoso.example>",
		subject: "Quarterly report draft",
		date:    time.Date(2026, 11, 19, 14, 3, 7, 0, time.UTC),
		body:    "Hi,\r\n\r\nthe draft is attached to the Teams channel. Comments by Friday please.\r\n\r\nAdele\r\n",
	},
	{
		from:    "Printer 3rd floor <scanner@contoso.example>",
		subject: "Scanned document",
		date:    time.Date(2026, 11, 20, 8, 45, 0, 0, time.UTC),
		body:    "Scan from device MFP-3F, 2 pages.\r\n",
	},
}

// seed creates the folders of a new mailbox and puts seedMessages in INBOX.
func seed(u *imapmemserver.User, mailbox string) error {
	for _, name := range exchangeFolders {
		if err := u.Create(name, nil); err != nil {
			return err
		}
		if err := u.Subscribe(name); err != nil {
			return err
		}
	}
	host := "AM0PR01MB" + strings.ToUpper(randomString(3)) + ".eurprd01.prod.exchangelabs.com"
	for i, m := range seedMessages {
		msg := fmt.Sprintf("From: %s\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s-%d@%s>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n%s",
			m.from, mailbox, m.subject, m.date.Format(time.RFC1123Z), randomString(12), i, host, m.body)
		opts := &imap.AppendOptions{Time: m.date}
		if m.seen {
			opts.Flags = []imap.Flag{imap.FlagSeen}
		}
		if _, err := u.Append("INBOX", literal([]byte(msg)), opts); err != nil {
			return err
		}
	}
	return nil
}

// literal makes msg an imap.LiteralReader.
func literal(msg []byte) *bytes.Reader { return bytes.NewReader(msg) }
