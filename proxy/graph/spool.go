package graph

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"io"
	"os"
)

// spool holds one message while it is received and sent on: in a file
// that has no name (O_TMPFILE, or unlinked as soon as it is created), its
// bytes encrypted with AES-256-CTR under a key made for this message and
// kept only in memory. Nothing readable is left on disk, even if broker
// dies with the file open: the key dies with the process.
type spool struct {
	f     *os.File
	block cipher.Block
	iv    [aes.BlockSize]byte
	w     *bufio.Writer
	size  int64
	max   int64
	over  bool
}

var errTooBig = errors.New("message exceeds the size limit")

func newSpool(dir string, max int64) (*spool, error) {
	f, err := tempFile(dir)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		f.Close()
		return nil, err
	}
	block, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		f.Close()
		return nil, err
	}
	s := &spool{f: f, block: block, max: max}
	if _, err := rand.Read(s.iv[:]); err != nil {
		f.Close()
		return nil, err
	}
	s.w = bufio.NewWriterSize(&cipher.StreamWriter{S: cipher.NewCTR(block, s.iv[:]), W: f}, 64<<10)
	return s, nil
}

// Write encrypts p onto the file. Beyond max it stops writing and
// remembers that the message was too big.
func (s *spool) Write(p []byte) (int, error) {
	if s.over {
		return len(p), nil
	}
	if s.size+int64(len(p)) > s.max {
		s.over = true
		return len(p), nil
	}
	n, err := s.w.Write(p)
	s.size += int64(n)
	return n, err
}

// finish flushes what was written; the spool is then only read.
func (s *spool) finish() error {
	if s.over {
		return errTooBig
	}
	return s.w.Flush()
}

// open returns a reader of the plaintext from the start. Readers are
// independent of each other.
func (s *spool) open() io.Reader {
	return bufio.NewReaderSize(&cipher.StreamReader{
		S: cipher.NewCTR(s.block, s.iv[:]),
		R: io.NewSectionReader(s.f, 0, s.size),
	}, 32<<10)
}

// close drops the file (and with it the only reference to its blocks).
func (s *spool) close() {
	if s != nil && s.f != nil {
		s.f.Close()
		s.f = nil
	}
}
