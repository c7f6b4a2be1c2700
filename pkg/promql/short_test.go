package promql

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// A query in a message or a log line is quoted whole up to MaxInMessage
// bytes; past that it is cut on a UTF-8 boundary and says how long the
// whole was, however long the query a rule renders (100 KB at 10,000 pods).
func TestShortQuotesAnExcerpt(t *testing.T) {
	if got := Short(`up{pod="a"}`); got != `"up{pod=\"a\"}"` {
		t.Errorf("a short query became %s", got)
	}
	long := `sum(rate(x{pod=~"` + strings.Repeat("pé|", 40000) + `"}[1m]))`
	got := Short(long)
	if !strings.HasSuffix(got, fmt.Sprintf("... (%d bytes)", len(long))) {
		t.Errorf("a %d-byte query: %q... does not say its length", len(long), got[:40])
	}
	if len(got) > MaxInMessage*2+64 {
		t.Errorf("a %d-byte query became %d bytes", len(long), len(got))
	}
	if cut := Cut(long, MaxInMessage); len(cut) > MaxInMessage || !utf8.ValidString(cut) {
		t.Errorf("Cut: %d bytes, valid UTF-8 %v", len(cut), utf8.ValidString(cut))
	}
}
