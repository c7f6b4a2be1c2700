package promql

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxInMessage is how much of a query, or of any text a rule, a request or
// another server made, a message quotes: at 10,000 pods a query is 100 KB,
// and a message ends up in HPA events, API server logs and a MetricRule's
// status.
const MaxInMessage = 200

// Short quotes s for a message, cut to MaxInMessage bytes with its full
// length said.
func Short(s string) string {
	if len(s) <= MaxInMessage {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(Cut(s, MaxInMessage)), len(s))
}

// Cut is s cut to at most n bytes, on a UTF-8 boundary.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
