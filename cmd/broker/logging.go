package main

import (
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"

	"golang.org/x/oauth2"

	"github.com/mailbroker/broker/broker"
)

// newLogger logs logfmt (slog's text format) to w from level up, with
// secrets redacted. Under systemd (JOURNAL_STREAM set) the journal stamps
// each line itself, so the time is left out.
func newLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	journal := os.Getenv("JOURNAL_STREAM") != ""
	replace := func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			if journal {
				return slog.Attr{}
			}
			return a
		}
		return redactAttr(a)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: replace}))
}

// redacted replaces a secret's value in the log.
const redacted = "[redacted]"

// redactAttr is defense in depth: broker logs no secret on purpose, and
// this keeps one out of the log should a line ever pass one. It redacts
//   - values of the types that carry tokens or passwords,
//   - attributes whose key names a secret (password, secret, token,
//     credential values, authorization), except keys known to hold none
//     (token_expiry, token_type, …),
//   - parts of strings and errors that look like a JWT or the credentials
//     of an Authorization header, whatever their key.
func redactAttr(a slog.Attr) slog.Attr {
	v := a.Value
	if v.Kind() == slog.KindAny {
		switch v.Any().(type) {
		case broker.Credentials, *broker.Credentials, broker.IssuedToken, *broker.IssuedToken, oauth2.Token, *oauth2.Token:
			return slog.String(a.Key, redacted)
		}
	}
	if secretKey(a.Key) {
		if v.Kind() == slog.KindString && v.String() == "" {
			return a // nothing to hide; "" says it is empty
		}
		return slog.String(a.Key, redacted)
	}
	switch {
	case v.Kind() == slog.KindString:
		if s, ok := scrub(v.String()); ok {
			return slog.String(a.Key, s)
		}
	case v.Kind() == slog.KindAny:
		if err, isErr := v.Any().(error); isErr && err != nil {
			if s, ok := scrub(err.Error()); ok {
				return slog.String(a.Key, s)
			}
		}
	}
	return a
}

// secretKeyWords are parts of keys whose values are secrets.
var secretKeyWords = []string{"password", "passwd", "secret", "token", "authorization", "cookie", "private_key", "assertion"}

// safeKeySuffixes end keys that name a secret but hold something else
// about it: when it expires, its kind, its file, its id.
var safeKeySuffixes = []string{"_expiry", "_expires", "_expires_at", "_expires_in", "_issued", "_age", "_type", "_file", "_id", "_label", "_count", "_scope", "_state", "_status"}

func secretKey(key string) bool {
	k := strings.ToLower(key)
	found := false
	for _, w := range secretKeyWords {
		if strings.Contains(k, w) {
			found = true
			break
		}
	}
	if !found {
		return false
	}
	for _, s := range safeKeySuffixes {
		if strings.HasSuffix(k, s) {
			return false
		}
	}
	return true
}

var (
	// jwtRE matches a JSON Web Token: a base64url JSON header ("eyJ" is
	// `{"`), a payload and a signature.
	jwtRE = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*`)
	// bearerRE matches the credentials of an HTTP Authorization header.
	bearerRE = regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}`)
)

// scrub replaces what looks like a token in s, and reports whether it did.
func scrub(s string) (string, bool) {
	if len(s) < 16 || !jwtRE.MatchString(s) && !bearerRE.MatchString(s) {
		return s, false
	}
	s = jwtRE.ReplaceAllString(s, redacted)
	s = bearerRE.ReplaceAllString(s, "$1 "+redacted)
	return s, true
}
