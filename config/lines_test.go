package config

import "testing"

func TestKeyLines(t *testing.T) {
	src := `# [comment] = 1
top = "a # not a comment" # [x]
multi = """
[not.a.table]
fake = 1
""" # ends
literal = '''
[[nor.this]]'''
"quoted key" = 1
dotted.key.here = [
  "one", # 1
  [2, 3],
  { inner = 4 },
]
[imap]
listen = ["a:1",
  "b:2"]
[[account]]
mailbox = "a"
[[account]]
app = "b"
[account.extra]
x = 1
[[account.sub]]
y = 2
[[account.sub]]
y = 3
[[app]]
name = { a = 1, b = { c = 2 } }
`
	want := map[string]int{
		"top":                      2,
		"multi":                    3,
		"literal":                  7,
		"quoted key":               9,
		"dotted":                   10,
		"dotted.key.here":          10,
		"dotted.key.here[1]":       11,
		"dotted.key.here[2]":       12,
		"dotted.key.here[3].inner": 13,
		"imap":                     15,
		"imap.listen":              16,
		"imap.listen[2]":           17,
		"account[1]":               18,
		"account[1].mailbox":       19,
		"account[2]":               20,
		"account[2].app":           21,
		"account[2].extra":         22,
		"account[2].extra.x":       23,
		"account[2].sub[1]":        24,
		"account[2].sub[1].y":      25,
		"account[2].sub[2].y":      27,
		"app[1].name.b.c":          29,
		// Missing keys are found at their table.
		"account[1].flow": 18,
		"imap.upstream":   15,
		"nope":            0,
	}
	lines := scanKeyLines([]byte(src))
	for path, line := range want {
		if got := lines.line(path); got != line {
			t.Fatalf("line(%q): got %d, want %d", path, got, line)
		}
	}
	for _, path := range []string{"not", "not.a.table", "fake", "nor.this[1]", "comment"} {
		if got, ok := lines.byPath[path]; ok {
			t.Fatalf("found %q on line %d, which is inside a string or comment", path, got)
		}
	}
	if got := lines.occurrence("account.sub.y", 1); got != (keyLine{"account[2].sub[2].y", 27}) {
		t.Fatalf("second account.sub.y: got %+v", got)
	}
}

func TestKeyLinesNeverStall(t *testing.T) {
	for _, src := range []string{"", "[", "[[", "a = [", "a = {", `a = """`, "a = '''", "= 1", "a = \"\\", "\x00", "a.=1\n[b"} {
		scanKeyLines([]byte(src)) // must return
	}
}
