package harness

import (
	"net"
	"time"

	"github.com/emersion/go-smtp"
)

// Deliver puts msg into mailbox's INBOX over LMTP.
func (d *Dovecot) Deliver(mailbox string, msg []byte) error {
	conn, err := net.DialTimeout("tcp", d.LMTPAddr, 5*time.Second)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return err
	}
	if err := c.Mail("harness@localhost", nil); err != nil {
		return err
	}
	if err := c.Rcpt(mailbox, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		return err
	}
	return c.Quit()
}
