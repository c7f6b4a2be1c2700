package rules

import (
	"strings"
	"testing"
	"text/template/parse"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

func teamRule(external bool, seriesQuery, metricsQuery string) TeamRule {
	return TeamRule{Namespace: "team-a", Name: "rps", External: external, Rule: config.Rule{
		SeriesQuery:  seriesQuery,
		MetricsQuery: metricsQuery,
		Resources: config.ResourceMapping{Overrides: map[string]config.GroupResource{
			"namespace": {Resource: "namespace"}, "pod": {Resource: "pod"},
		}},
	}}
}

// A team's rule reads its namespace's series only, whatever it writes: its
// seriesQuery is confined, and so is every query it renders.
func TestTeamRuleIsConfined(t *testing.T) {
	r, err := CompileTeam(teamRule(false, `{__name__=~"app_.*",namespace=~".+"}`,
		`sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]) or rate(<<.Series>>{namespace="team-b"}[1m])) by (<<.GroupBy>>)`), "namespace")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.SeriesQuery(), `{__name__=~"app_.*",namespace="team-a"}`; got != want {
		t.Errorf("seriesQuery: got %s, want %s", got, want)
	}
	if r.String() != "MetricRule team-a/rps" || r.Namespace() != "team-a" || r.Owner() == nil {
		t.Errorf("the rule is named %q in namespace %q", r, r.Namespace())
	}
	expr, err := r.Render("app_requests_total", []promql.Matcher{promql.Equals("namespace", "team-b"), promql.Equals("pod", "x")}, []string{"pod"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(expr, "team-b") || strings.Count(expr, `namespace="team-a"`) != 2 {
		t.Errorf("the rendered query reads more than team-a: %s", expr)
	}
	if label, _ := r.LabelFor("namespace"); label != "namespace" {
		t.Errorf("namespace label: %q", label)
	}
}

// An external team rule without a namespace label in its resources gets
// the cluster's: it is served in its namespace, matched on it.
func TestTeamExternalRuleGetsTheNamespaceLabel(t *testing.T) {
	tr := teamRule(true, `queue_depth`, `sum(<<.Series>>{<<.LabelMatchers>>})`)
	tr.Rule.Resources = config.ResourceMapping{}
	r, err := CompileTeam(tr, "kubernetes_namespace")
	if err != nil {
		t.Fatal(err)
	}
	if label, ok := r.LabelFor("namespace"); !ok || label != "kubernetes_namespace" {
		t.Errorf("namespace label: %q, %v", label, ok)
	}
	if r.SeriesQuery() != `queue_depth{kubernetes_namespace="team-a"}` || !r.Namespaced() {
		t.Errorf("seriesQuery %s, namespaced %v", r.SeriesQuery(), r.Namespaced())
	}
}

// What cannot be confined, or read another namespace, is refused, naming
// the field of the rule object.
func TestTeamRuleRejects(t *testing.T) {
	no := false
	for _, tc := range []struct {
		name string
		edit func(*TeamRule)
		want string
	}{
		{"info() reads series it does not select", func(tr *TeamRule) {
			tr.Rule.MetricsQuery = `info(sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>))`
		}, "spec.metricsQuery"},
		{"namespaced: false", func(tr *TeamRule) { tr.External = true; tr.Rule.Resources.Namespaced = &no }, "spec.resources.namespaced"},
		{"another label for namespaces", func(tr *TeamRule) {
			tr.Rule.Resources.Overrides = map[string]config.GroupResource{"exported_namespace": {Resource: "namespace"}, "pod": {Resource: "pod"}}
		}, `spec.resources: map the label "namespace" to namespaces, not "exported_namespace"`},
		{"a seriesQuery that is not a selector", func(tr *TeamRule) { tr.Rule.SeriesQuery = `rate(x[1m])` }, "spec.seriesQuery"},
		{"a broken metricsQuery", func(tr *TeamRule) { tr.Rule.MetricsQuery = `sum(<<.Series>>{<<.LabelMatchers>>}` }, "spec.metricsQuery"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := teamRule(false, `app_requests_total`, `sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)`)
			tc.edit(&tr)
			_, err := CompileTeam(tr, "namespace")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// A team's templates are data, not code: text with the documented
// placeholders, checked on the parse tree before anything runs. The attacks
// (a loop of ten million, one that prints inside it, a template that
// calls itself, variables, function calls) are refused naming the field,
// with no more of the template than a short excerpt.
func TestTeamTemplatesAreTextWithPlaceholders(t *testing.T) {
	long := strings.Repeat("x", 100_000)
	for _, tc := range []struct {
		name, metricsQuery, template string
		want                         string
	}{
		{name: "a loop over an integer", metricsQuery: `<<range 10000000>><<end>>up`, want: "spec.metricsQuery: a MetricRule's templates are text with placeholders only"},
		{name: "a loop that prints", metricsQuery: `<<range 100000000>>` + long + `<<end>>up`, want: "is not allowed"},
		{name: "a range over the group-by labels", metricsQuery: `sum(x) by (<<range .GroupBySlice>><<.>>,<<end>>)`, want: "is not allowed"},
		{name: "if", metricsQuery: `<<if .Series>>up<<end>>`, want: "is not allowed"},
		{name: "with", metricsQuery: `<<with .Series>><<.>><<end>>`, want: "is not allowed"},
		{name: "a template that calls itself", metricsQuery: `<<define "a">><<template "a">><<end>><<template "a">>`, want: "define and block are not allowed"},
		{name: "a block", metricsQuery: `<<block "b" .>>up<<end>>`, want: "define and block are not allowed"},
		{name: "a variable", metricsQuery: `<<$x := .Series>>up`, want: "is not one of"},
		{name: "printf", metricsQuery: `<<printf "%0100000000d" 1>>`, want: "is not one of"},
		{name: "len", metricsQuery: `sum(<<len .LabelMatchers>>)`, want: "is not one of"},
		{name: "a pipeline", metricsQuery: `<<.Series | print>>`, want: "is not one of"},
		{name: "a field it does not have", metricsQuery: `<<.Resource>>`, want: "is not one of"},
		{name: "index of another map", metricsQuery: `<<index .GroupBySlice 0>>`, want: "is not one of"},
		{name: "more placeholders than allowed", metricsQuery: strings.Repeat(`<<.Series>>`, MaxTeamPlaceholders+1), want: "placeholders, more than"},
		{name: "the request's matchers too many times", metricsQuery: "sum(" + strings.Repeat(`up{<<.LabelMatchers>>} + `, MaxTeamDataPlaceholders) + "up{<<.LabelMatchers>>})", want: ".LabelMatchers and .LabelValuesByName 9 times"},
		{name: "a loop in resources.template", template: `<<range 10000000>><<end>><<.Resource>>`, want: "spec.resources.template: a MetricRule's templates are text with placeholders only"},
		{name: "a call in resources.template", template: `<<printf "%s" .Resource>>`, want: "spec.resources.template"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := teamRule(false, `app_requests_total`, `sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)`)
			if tc.metricsQuery != "" {
				tr.Rule.MetricsQuery = tc.metricsQuery
			}
			if tc.template != "" {
				tr.Rule.Resources = config.ResourceMapping{Template: tc.template}
			}
			_, err := CompileTeam(tr, "namespace")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
			if len(err.Error()) > 2000 {
				t.Errorf("the error quotes %d bytes: %.300s...", len(err.Error()), err)
			}
		})
	}
}

// Every placeholder the API documents is accepted in a team's template.
func TestTeamTemplatesTakeTheDocumentedPlaceholders(t *testing.T) {
	tr := teamRule(false, `app_requests_total`, "")
	tr.Rule.MetricsQuery = `sum(rate(<<.Series>>{pod=~"<<index .LabelValuesByName "pod">>",<<.LabelMatchers>>}[1m])) by (<<- .GroupBy ->>)`
	tr.Rule.Resources = config.ResourceMapping{Template: `<<.Resource>>`}
	r, err := CompileTeam(tr, "namespace")
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Render("app_requests_total", []promql.Matcher{promql.Equals("pod", "a.b")}, []string{"pod"})
	if err != nil {
		t.Fatal(err)
	}
	want := `sum by (pod) (rate(app_requests_total{namespace="team-a",pod="a.b",pod=~"a\\.b"}[1m]))`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// Every render, the file's rules too, is capped: a template that writes
// more than its request's data allows fails, and the error does not carry
// the text.
func TestRendersAreCapped(t *testing.T) {
	set, err := Parse([]byte(`rules:
- seriesQuery: app_requests_total
  resources: {template: <<.Resource>>}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>) <<range 100000>> + 1<<end>>'
`), "cfg.yaml")
	if err == nil {
		t.Fatalf("a file rule rendering 500 KB of sample query was accepted: %v", set)
	}
	if !strings.Contains(err.Error(), "longer than") || len(err.Error()) > 2000 {
		t.Errorf("got %.500s", err)
	}

	// A file rule that repeats the request's matchers renders for a
	// few pods, and fails for very many, saying so.
	set, err = Parse([]byte(`rules:
- seriesQuery: app_requests_total
  resources: {template: <<.Resource>>}
  metricsQuery: '<<range .GroupBySlice>><<range $.GroupBySlice>>sum(<<$.Series>>{<<$.LabelMatchers>>}) + <<end>><<end>>1'
`), "cfg.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := set.Custom[0]
	if _, err := r.Render("x", []promql.Matcher{promql.Equals("pod", "a")}, []string{"pod"}); err != nil {
		t.Fatalf("a small render: %v", err)
	}
	many := make([]string, 100)
	for i := range many {
		many[i] = "l" + strings.Repeat("a", i%7)
	}
	_, err = r.Render("x", []promql.Matcher{promql.OneOf("pod", []string{strings.Repeat("p", 1000)})}, many)
	if err == nil || !strings.Contains(err.Error(), "longer than") || len(err.Error()) > 1000 {
		t.Errorf("a render of 100×100 copies of the matchers: %.500v", err)
	}
}

// FuzzTeamTemplate: whatever a team writes as its metricsQuery, a template
// that the check accepts is text and placeholders only, so it renders each
// placeholder once: for the largest sample request it renders into no more
// than its text plus MaxTeamPlaceholders copies of the request's data, and
// (for a template within the CRD's 8,192 bytes) into less than 64 KiB with
// the sample data. What the check refuses never runs.
func FuzzTeamTemplate(f *testing.F) {
	for _, seed := range []string{
		`sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)`,
		`<<range 10000000>><<end>>up`,
		`<<index .LabelValuesByName "pod">>`,
		`<<define "a">><<template "a">><<end>>`,
		`<<.GroupBySlice>><<- /* c */ ->>`,
		`<<printf "%d" 1>>`,
	} {
		f.Add(seed)
	}
	data := QueryData("series_name", []promql.Matcher{promql.OneOf("pod", []string{"a", "b", "c"}), promql.Equals("namespace", "ns")}, []string{"pod", "namespace"})
	f.Fuzz(func(t *testing.T, text string) {
		if len(text) > 8192 {
			return
		}
		tmpl, err := newTemplate("metricsQuery", text)
		if err != nil {
			return
		}
		if checkTeamTemplate(tmpl, queryPlaceholders, true) != nil {
			return
		}
		for _, node := range tmpl.Root.Nodes {
			if _, ok := node.(*parse.TextNode); ok {
				continue
			}
			if _, ok := node.(*parse.ActionNode); !ok {
				t.Fatalf("accepted a template with a %T: %q", node, text)
			}
		}
		out, err := render(tmpl, data, renderLimit(data))
		if err != nil {
			return // e.g. a missing key: an error, not a loop
		}
		biggest := len(data.LabelMatchers) + len(data.Series) + len(data.GroupBy) + len("[pod namespace]")
		for _, v := range data.LabelValuesByName {
			biggest = max(biggest, len(v))
		}
		if len(out) > len(text)+MaxTeamPlaceholders*biggest || len(out) >= MaxRender {
			t.Fatalf("a %d-byte accepted template rendered %d bytes", len(text), len(out))
		}
	})
}

// FuzzTeamResourceTemplate: a resources.template the team check accepts
// holds text and actions only, and renders into at most its own length
// plus a resource name per placeholder.
func FuzzTeamResourceTemplate(f *testing.F) {
	for _, seed := range []string{
		`<<.Resource>>`,
		`kube_<<.Group>>_<<.Resource>>`,
		`<<range 10000000>><<end>>x`,
		`<<with .Resource>><<.>><<end>>`,
		`<<printf "%0100000000d" 1>>`,
	} {
		f.Add(seed)
	}
	data := ResourceTemplateData{Group: "apps", Resource: "deployment"}
	f.Fuzz(func(t *testing.T, text string) {
		if len(text) > 8192 {
			return
		}
		tmpl, err := newTemplate("resources.template", text)
		if err != nil || checkTeamTemplate(tmpl, resourcePlaceholders, false) != nil {
			return
		}
		for _, node := range tmpl.Root.Nodes {
			switch node.(type) {
			case *parse.TextNode, *parse.ActionNode:
			default:
				t.Fatalf("accepted a template with a %T: %q", node, text)
			}
		}
		out, err := render(tmpl, data, MaxRender)
		if err != nil {
			return
		}
		if len(out) > len(text)+MaxTeamPlaceholders*len("deployment") {
			t.Fatalf("a %d-byte accepted template rendered %d bytes", len(text), len(out))
		}
	})
}

// What a team's rule multiplies is bounded: replacements that could make
// a name gigabytes long, and a name.as of many references, are refused;
// a metric name longer than a resource name may be is not served.
func TestTeamRulesCannotMultiplyNames(t *testing.T) {
	tr := teamRule(false, `app_requests_total`, `sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)`)
	for range 16 {
		tr.Rule.LabelValueReplacements = append(tr.Rule.LabelValueReplacements, config.LabelValueReplacement{Find: "a", Replace: strings.Repeat("a", 253)})
	}
	if _, err := CompileTeam(tr, "namespace"); err == nil || !strings.Contains(err.Error(), "spec.labelValueReplacements[0]: the replacements so far") {
		t.Errorf("16 replacements of a by 253 a's: %v", err)
	}
	tr.Rule.LabelValueReplacements = []config.LabelValueReplacement{{Find: "-", Replace: "_"}, {Find: "x", Replace: "yy"}}
	if _, err := CompileTeam(tr, "namespace"); err != nil {
		t.Errorf("ordinary replacements: %v", err)
	}
	tr.Rule.Name = config.NameMapping{Matches: "^(.*)$", As: strings.Repeat("$1", 100)}
	if _, err := CompileTeam(tr, "namespace"); err == nil || !strings.Contains(err.Error(), "spec.name.as: uses 100 references") {
		t.Errorf("name.as of 100 references: %v", err)
	}
	tr.Rule.Name = config.NameMapping{Matches: "^(.*)$", As: "${1}_${1}"}
	r, err := CompileTeam(tr, "namespace")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.MetricName(strings.Repeat("a", 200)); ok {
		t.Error("a 401-character metric name is served")
	}
	if name, ok := r.MetricName("rps"); !ok || name != "rps_rps" {
		t.Errorf("MetricName(rps) = %q, %v", name, ok)
	}
}
