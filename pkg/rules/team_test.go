package rules

import (
	"strings"
	"testing"

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
