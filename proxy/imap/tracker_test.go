package imap

import (
	"strings"
	"testing"
)

func TestTrackerQuiet(t *testing.T) {
	type step struct {
		client, upstream string
		quiet            bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"idle between commands", []step{
			{"", "", true},
			{"a1 NOOP\r\n", "", false},
			{"", "a1 OK NOOP completed\r\n", true},
		}},
		{"a partial command is in flight", []step{
			{"a1 NO", "", false},
			{"OP\r\n", "a1 OK done\r\n", true},
		}},
		{"a response cut in its line", []step{
			{"a1 NOOP\r\n", "* 3 EXI", false},
			{"", "STS\r\na1 OK", false},
			{"", " done\r\n", true},
		}},
		{"a literal that looks like a tagged response", []step{
			{"a1 FETCH 1 BODY[]\r\n", "* 1 FETCH (BODY[] {14}\r\n", false},
			{"", "a1 OK fake\r\n", false},
			{"", ")\r\n", false},
			{"", "a1 OK FETCH completed\r\n", true},
		}},
		{"APPEND with a synchronising literal", []step{
			{"a2 APPEND INBOX {5}\r\n", "+ Ready\r\n", false},
			{"hel", "", false},
			{"lo\r\n", "", false},
			{"", "a2 OK APPEND completed\r\n", true},
		}},
		{"APPEND with LITERAL+ split across reads", []step{
			{"a2 APPEND INBOX {11+}\r\nhello\r\n", "", false},
			{"world\r\n", "", false},
			{"", "a2 OK [APPENDUID 1 2] APPEND completed\r\n", true},
		}},
		{"APPEND refused before its literal", []step{
			{"a3 APPEND Nope {500}\r\n", "a3 NO [TRYCREATE] no such mailbox\r\n", true},
			{"a4 NOOP\r\n", "", false},
			{"", "a4 OK\r\n", true},
		}},
		{"IDLE may be ended", []step{
			{"a5 SELECT INBOX\r\n", "* 3 EXISTS\r\na5 OK [READ-WRITE] done\r\n", true},
			{"a6 IDLE\r\n", "", true},
			{"", "+ idling\r\n", true},
			{"", "* 4 EXISTS\r\n", true},
			{"", "* 1 FETCH (FLAGS (\\Seen)", false},
			{"", ")\r\n", true},
			{"DONE\r\n", "", false},
			{"", "a6 OK IDLE terminated\r\n", true},
		}},
		{"pipelined commands", []step{
			{"b1 NOOP\r\nb2 NOOP\r\n", "b1 OK\r\n", false},
			{"", "b2 OK\r\n", true},
		}},
		{"COMPRESS makes the stream opaque", []step{
			{"c1 COMPRESS DEFLATE\r\n", "c1 OK DEFLATE active\r\n", false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr tracker
			for i, st := range tt.steps {
				tr.Client([]byte(st.client))
				tr.Upstream([]byte(st.upstream))
				if got := tr.Quiet(); got != st.quiet {
					t.Fatalf("step %d (%q, %q): Quiet %v, want %v; state %+v", i, st.client, st.upstream, got, st.quiet, tr)
				}
			}
		})
	}
}

func TestTrackerLongLinesAndLiterals(t *testing.T) {
	var tr tracker
	tr.Client([]byte("x1 FETCH 1:* (FLAGS)\r\n"))
	long := "* 1 FETCH (X-LONG \"" + strings.Repeat("a", 10000) + "\")\r\n"
	for i := 0; i < len(long); i += 7 {
		tr.Upstream([]byte(long[i:min(i+7, len(long))]))
	}
	big := strings.Repeat("b", 1<<20)
	tr.Upstream([]byte("* 2 FETCH (BODY[] {" + "1048576" + "}\r\n"))
	tr.Upstream([]byte(big[:1000]))
	if tr.Quiet() {
		t.Fatal("quiet inside a literal")
	}
	tr.Upstream([]byte(big[1000:] + ")\r\nx1 OK done\r\n"))
	if !tr.Quiet() {
		t.Fatalf("not quiet after the tagged OK: %+v", tr)
	}
}

func TestLiteralAnnounced(t *testing.T) {
	for in, want := range map[string]int64{"{5}\r\n": 5, "x {12+}\r\n": 12, "~{0}\r\n": 0, "{7-}\n": 7} {
		if n, ok := literalAnnounced([]byte(in)); !ok || n != want {
			t.Errorf("%q: %d, %v; want %d", in, n, ok, want)
		}
	}
	for _, in := range []string{"{}\r\n", "{x}\r\n", "}\r\n", "a1 OK\r\n", "{99999999999999999999}\r\n"} {
		if _, ok := literalAnnounced([]byte(in)); ok {
			t.Errorf("%q: announced a literal", in)
		}
	}
}
