package promql

import (
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/common/model"
	"k8s.io/apimachinery/pkg/labels"
)

func TestFromSelector(t *testing.T) {
	tests := []struct {
		name     string
		selector string
		want     string
		wantErr  string
	}{
		{name: "renders nothing for an empty selector", selector: "", want: ""},
		{name: "renders equality with a plain value", selector: "verb=GET", want: `verb="GET"`},
		{name: "renders double equality", selector: "verb==GET", want: `verb="GET"`},
		{name: "renders inequality", selector: "verb!=GET", want: `verb!="GET"`},
		{name: "renders in as an escaped alternation", selector: "verb in (GET,a.b)", want: `verb=~"GET|a\\.b"`},
		{name: "renders in with one value as equality", selector: "verb in (GET)", want: `verb="GET"`},
		{name: "renders notin as a negative alternation", selector: "verb notin (GET,PUT)", want: `verb!~"GET|PUT"`},
		{name: "renders notin with one value as inequality", selector: "verb notin (GET)", want: `verb!="GET"`},
		{name: "renders exists as not empty", selector: "verb", want: `verb!=""`},
		{name: "renders does-not-exist as empty", selector: "!verb", want: `verb=""`},
		{name: "renders several requirements in key order", selector: "zone=a,code in (200,201)", want: `code=~"200|201",zone="a"`},
		{name: "rejects greater-than", selector: "code>200", wantErr: "has no PromQL matcher"},
		{name: "rejects less-than", selector: "code<200", wantErr: "has no PromQL matcher"},
		{name: "rejects a key that is no Prometheus label name", selector: "app.kubernetes.io/name=x", wantErr: "not a valid Prometheus label name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sel, err := labels.Parse(tc.selector)
			if err != nil {
				if tc.wantErr != "" {
					return // Kubernetes already rejects it; nothing reaches us
				}
				t.Fatalf("labels.Parse(%q): %v", tc.selector, err)
			}
			ms, err := FromSelector(sel)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("FromSelector(%q) error = %v, want %q", tc.selector, err, tc.wantErr)
				}
				var se *SelectorError
				if !asSelectorError(err, &se) {
					t.Errorf("error is %T, want *SelectorError", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("FromSelector(%q) error: %v", tc.selector, err)
			}
			if got := Join(ms); got != tc.want {
				t.Errorf("FromSelector(%q) = %s, want %s", tc.selector, got, tc.want)
			}
		})
	}
}

func asSelectorError(err error, target **SelectorError) bool {
	var se *SelectorError
	ok := errors.As(err, &se)
	if ok {
		*target = se
	}
	return ok
}

func TestOneOf(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   string
	}{
		{name: "uses equality for one value", values: []string{"app-1"}, want: `pod="app-1"`},
		{name: "sorts, dedups and escapes several values", values: []string{"b.x", "a", "b.x"}, want: `pod=~"a|b\\.x"`},
		{name: "escapes quotes and backslashes in the literal", values: []string{`a"b\c`}, want: `pod="a\"b\\c"`},
		{name: "escapes regex metacharacters and quotes", values: []string{`a"|.*`, "b"}, want: `pod=~"a\"\\|\\.\\*|b"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := OneOf("pod", tc.values).String(); got != tc.want {
				t.Errorf("OneOf(%q) = %s, want %s", tc.values, got, tc.want)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	tests := []struct {
		name   string
		expr   string
		want   time.Duration
		wantOK bool
	}{
		{name: "finds a rate window", expr: `sum(rate(x{a="b"}[1m])) by (pod)`, want: time.Minute, wantOK: true},
		{name: "takes the longest of several", expr: `rate(x[30s]) / rate(y[5m])`, want: 5 * time.Minute, wantOK: true},
		{name: "reads the range of a subquery", expr: `max_over_time(rate(x[1m])[10m:30s])`, want: 10 * time.Minute, wantOK: true},
		{name: "reads compound durations", expr: `rate(x[1h30m])`, want: 90 * time.Minute, wantOK: true},
		{name: "ignores brackets in strings", expr: `x{a="[2h]"}`, wantOK: false},
		{name: "ignores brackets in strings with escaped quotes", expr: `rate(x{a="\"[2h]"}[2m])`, want: 2 * time.Minute, wantOK: true},
		{name: "reports no window for an instant expression", expr: `sum(x) by (pod)`, wantOK: false},
		{name: "survives an unclosed bracket", expr: `rate(x[1m`, wantOK: false},
		{name: "reads a range in a nested subquery", expr: `max_over_time(max_over_time(rate(x[1m])[5m:])[20m:1m] offset 2h)`, want: 20 * time.Minute, wantOK: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Window(tc.expr)
			if ok != tc.wantOK || got != tc.want {
				t.Errorf("Window(%q) = %v, %v; want %v, %v", tc.expr, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestSelectedName(t *testing.T) {
	for sel, want := range map[string]string{
		`app_requests_total`:                        "app_requests_total",
		`app_requests_total{namespace!="",pod!=""}`: "app_requests_total",
		`{__name__="x_total",namespace="a"}`:        "x_total",
		`{__name__=~"x_.*"}`:                        "",
		`{namespace="a"} `:                          "",
		`not a selector{`:                           "",
		`{"http.server.duration",namespace="a"}`:    "http.server.duration",
	} {
		if got, ok := SelectedName(sel); got != want || ok != (want != "") {
			t.Errorf("SelectedName(%q) = %q, %v; want %q", sel, got, ok, want)
		}
	}
}

// scanString returns the PromQL string literal at the start of s the way
// the PromQL lexer delimits it: up to the first unescaped quote.
func scanString(s string) (lit string, ok bool) {
	if s == "" || s[0] != '"' {
		return "", false
	}
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return s[:i+1], true
		}
	}
	return "", false
}

// FuzzMatcherValueCannotEscape shows that no label value, however hostile,
// can end its matcher's string early or change what it matches: the
// literal ends exactly at the end of the matcher, PromQL's unquoting (Go
// rules) gives the value back, and the regex form matches the value and
// nothing else from a set of near misses.
func FuzzMatcherValueCannotEscape(f *testing.F) {
	for _, seed := range []string{"", "a", `"`, `\`, `\"`, `"} or vector(1) #`, "a|b", ".*", "\n", "\x00", "é", "\xff", "`", "'", "]", "}"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		for _, m := range []Matcher{Equals("pod", v), OneOf("pod", []string{v, "other"})} {
			s := m.String()
			prefix := m.Name + string(m.Op)
			if !strings.HasPrefix(s, prefix) {
				t.Fatalf("matcher %q does not start with %q", s, prefix)
			}
			lit, ok := scanString(s[len(prefix):])
			if !ok {
				t.Fatalf("matcher %q: no closed string literal", s)
			}
			if len(prefix)+len(lit) != len(s) {
				t.Fatalf("matcher %q: literal %q ends before the matcher does", s, lit)
			}
			got, err := strconv.Unquote(lit)
			if err != nil {
				t.Fatalf("matcher %q: literal does not unquote: %v", s, err)
			}
			if got != m.Value {
				t.Fatalf("matcher %q unquotes to %q, want %q", s, got, m.Value)
			}
			if m.Op != RegexpEq || !utf8.ValidString(v) {
				// Prometheus rejects a regex with invalid UTF-8 outright.
				continue
			}
			// Prometheus anchors regex matchers.
			re, err := regexp.Compile("^(?:" + got + ")$")
			if err != nil {
				t.Fatalf("matcher %q: regex does not compile: %v", s, err)
			}
			if !re.MatchString(v) {
				t.Fatalf("matcher %q does not match its own value %q", s, v)
			}
			for _, miss := range []string{v + "x", "x" + v, v + v + "|", "anything"} {
				if miss != v && miss != "other" && re.MatchString(miss) {
					t.Fatalf("matcher %q also matches %q", s, miss)
				}
			}
		}
	})
}

// FuzzFromSelector feeds arbitrary Kubernetes label selectors through
// FromSelector and checks what a PromQL reader would see: every matcher is
// a valid label name and a string literal that unquotes to its value, and
// the regular expression of a set requirement matches exactly the set's
// values. Run it with make fuzz.
func FuzzFromSelector(f *testing.F) {
	for _, seed := range []string{
		"app=web", "app in (a.b,c-d),tier!=x", "!canary,team", "env notin (prod,stage)",
		"a.b/c=x_y", "k in (a,b,c,d,e,f)", "x==y", "x>3",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		sel, err := labels.Parse(raw)
		if err != nil {
			return
		}
		ms, err := FromSelector(sel)
		if err != nil {
			var se *SelectorError
			if !errors.As(err, &se) {
				t.Fatalf("%q: error %v is not a *SelectorError", raw, err)
			}
			return
		}
		reqs, _ := sel.Requirements()
		if len(ms) != len(reqs) {
			t.Fatalf("%q: %d matchers for %d requirements", raw, len(ms), len(reqs))
		}
		for i, m := range ms {
			if !model.LegacyValidation.IsValidLabelName(m.Name) {
				t.Fatalf("%q: matcher name %q is not a label name", raw, m.Name)
			}
			s := m.String()
			quoted := strings.TrimPrefix(s, m.Name+string(m.Op))
			v, err := strconv.Unquote(quoted)
			if err != nil || v != m.Value {
				t.Fatalf("%q: matcher %s: value does not unquote to %q (%v)", raw, s, m.Value, err)
			}
			if m.Op != RegexpEq && m.Op != RegexpNeq {
				continue
			}
			re, err := regexp.Compile("^(?:" + m.Value + ")$")
			if err != nil {
				t.Fatalf("%q: matcher %s is not a valid regular expression: %v", raw, s, err)
			}
			values := reqs[i].ValuesUnsorted()
			for _, want := range values {
				if !re.MatchString(want) {
					t.Fatalf("%q: %s does not match its value %q", raw, s, want)
				}
			}
			for _, other := range []string{"", "x", values[0] + "x", "x" + values[0], strings.ToUpper(values[0])} {
				if !slices.Contains(values, other) && re.MatchString(other) {
					t.Fatalf("%q: %s matches %q, which is not in the set", raw, s, other)
				}
			}
		}
	})
}
