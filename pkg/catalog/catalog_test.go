package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// Three external rules: two name the same metric, the third is left out.
const file = `externalRules:
- seriesQuery: a_total
  resources: {namespaced: false}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
- seriesQuery: a_total
  resources: {namespaced: false}
  metricsQuery: max(<<.Series>>{<<.LabelMatchers>>})
- seriesQuery: b_total
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
`

func newCatalog(t *testing.T) (*Catalog[string, int], []*rules.Rule) {
	t.Helper()
	set, err := rules.Parse([]byte(file), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	gr := schema.GroupResource{Resource: "externalmetrics"}
	return New(Config[string, int]{
		API:     "external",
		Section: "externalRules",
		Name:    func(k string) string { return "external metric " + k },
		Rules:   set.External,
		Build: func(rs []*rules.Rule, round discovery.Result, idx *Index[string, int]) {
			for i, r := range rs {
				for _, ls := range round.Series[r.SeriesQuery()] {
					name := rules.SeriesName(ls)
					if r.LeftOut() != nil {
						idx.Refuse(name, r.LeftOut())
						continue
					}
					idx.Add(name, Entry[int]{Source: Source{Rule: r, Series: name}, Value: i})
				}
			}
		},
		Compare:  strings.Compare,
		Describe: func(k string, e Entry[int]) Served { return Served{Source: e.Source, Metric: k} },
		NotFound: func(k, why string) error { return apierrors.NewNotFound(gr, k+": "+why) },
	}), set.External
}

func round(queries ...string) discovery.Result {
	r := discovery.Result{Series: map[string][]model.LabelSet{}}
	for _, q := range queries {
		r.Series[q] = []model.LabelSet{{"__name__": model.LabelValue(q)}}
	}
	return r
}

func TestLookup(t *testing.T) {
	c, rs := newCatalog(t)
	if _, err := c.Lookup(context.Background(), "a_total", "", nil); !apierrors.IsServiceUnavailable(err) {
		t.Errorf("before discovery: %v, want 503", err)
	}
	// b_total's rule was never listed: an unknown metric may be its.
	c.Update(discovery.Result{Series: round("a_total").Series, Failed: map[string]error{"b_total": errors.New("refused")}})
	if _, err := c.Lookup(context.Background(), "c_total", "", nil); !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("with a rule pending: %v, want 503 naming why", err)
	}
	e, err := c.Lookup(context.Background(), "a_total", "", nil)
	if err != nil || e.Rule != rs[0] || e.Value != 0 {
		t.Errorf("a_total: %+v %v, want the first rule in the file", e, err)
	}
	want := []Overlap{{Metric: "a_total", Kept: Source{rs[0], "a_total"}, Ignored: Source{rs[1], "a_total"}}}
	served, overlaps := c.Served()
	if d := cmp.Diff(want, overlaps, cmp.Comparer(func(a, b *rules.Rule) bool { return a == b })); d != "" {
		t.Errorf("overlaps (-want +got):\n%s", d)
	}
	if len(served) != 1 || served[0].Rule != rs[0] {
		t.Errorf("served = %+v", served)
	}

	c.Update(round("a_total", "b_total"))
	_, err = c.Lookup(context.Background(), "b_total", "", nil)
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "left out") || !strings.Contains(err.Error(), "c.yaml:8") {
		t.Errorf("a left-out rule's metric: %v, want 404 saying why", err)
	}
	// While a rule is pending, a metric a left-out rule would serve may
	// be the pending rule's: 503.
	fresh, _ := newCatalog(t)
	fresh.Update(discovery.Result{Series: round("b_total").Series, Failed: map[string]error{"a_total": errors.New("refused")}})
	if _, err := fresh.Lookup(context.Background(), "b_total", "", nil); !apierrors.IsServiceUnavailable(err) {
		t.Errorf("a left-out rule's metric while another rule is pending: %v, want 503", err)
	}
	if _, err := c.Lookup(context.Background(), "c_total", "", nil); !apierrors.IsNotFound(err) || strings.Contains(err.Error(), "left out") {
		t.Errorf("an unknown metric: %v, want a plain 404", err)
	}
	if got := c.Index().Len(); got != 1 {
		t.Errorf("%d metrics served, want 1", got)
	}
}

func teamRule(t *testing.T, ns, series string) *rules.Rule {
	t.Helper()
	r, err := rules.CompileTeam(rules.TeamRule{Namespace: ns, Name: series, External: true, Rule: config.Rule{
		SeriesQuery: series, MetricsQuery: "sum(<<.Series>>{<<.LabelMatchers>>})",
	}}, "namespace")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A team's rule serves its metric in its own namespace only; a rule of
// the file serves in every namespace and wins over a team's rule naming
// the same metric; a namespace whose rules were never listed is 503 in
// that namespace only.
func TestTeamRulesServeTheirNamespace(t *testing.T) {
	c, file := newCatalog(t)
	aOwn, aShadowed, b := teamRule(t, "team-a", "c_total"), teamRule(t, "team-a", "a_total"), teamRule(t, "team-b", "c_total")
	bPending := teamRule(t, "team-b", "d_total")
	all := append(append([]*rules.Rule{}, file...), aOwn, aShadowed, b, bPending)
	r := discovery.Result{Series: map[string][]model.LabelSet{}}
	for _, rule := range all[:len(all)-1] {
		name := strings.SplitN(rule.SeriesQuery(), "{", 2)[0]
		r.Series[rule.SeriesQuery()] = []model.LabelSet{{"__name__": model.LabelValue(name)}}
	}
	c.SetRules(all, r)
	ctx := context.Background()

	for ns, want := range map[string]*rules.Rule{"team-a": aOwn, "team-b": b} {
		e, err := c.Lookup(ctx, "c_total", ns, nil)
		if err != nil || e.Rule != want {
			t.Errorf("c_total in %s: %v, %v; want %s", ns, e.Rule, err, want)
		}
	}
	// Another namespace's rules are theirs: team-c gets the 404 of a
	// metric nobody serves, which names neither team-a nor team-b, and
	// the metric is not this adapter's to answer there (an upstream's).
	_, err := c.Lookup(ctx, "c_total", "team-c", nil)
	_, nobody := c.Lookup(ctx, "nobody_serves_it", "team-c", nil)
	if !apierrors.IsNotFound(err) || strings.Contains(err.Error(), "team-") || strings.Contains(err.Error(), "namespace") ||
		strings.ReplaceAll(err.Error(), "c_total", "nobody_serves_it") != nobody.Error() {
		t.Errorf("c_total in team-c: %v, want the 404 of a metric nobody serves (%v)", err, nobody)
	}
	for ns, want := range map[string]bool{"team-a": true, "team-b": true, "team-c": false, "": false} {
		if got := c.Serves("c_total", ns); got != want {
			t.Errorf("Serves(c_total, %q) = %v, want %v", ns, got, want)
		}
	}
	if !c.Serves("a_total", "team-c") || !c.Serves("a_total", "") {
		t.Error("the file's a_total is not served in every namespace")
	}
	if e, err := c.Lookup(ctx, "a_total", "team-a", nil); err != nil || e.Rule != file[0] {
		t.Errorf("a_total in team-a: %v, %v; want the file's rule", e.Rule, err)
	}
	idx := c.Index()
	if ov := idx.Overlaps(); !slices.ContainsFunc(ov, func(o Overlap) bool { return o.Ignored.Rule == aShadowed && o.Kept.Rule == file[0] }) {
		t.Errorf("the overruled team rule is not an overlap: %v", ov)
	}
	if _, err := c.Lookup(ctx, "d_total", "team-b", nil); !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "MetricRule team-b/d_total") {
		t.Errorf("d_total in team-b, never listed: %v, want 503", err)
	}
	if _, err := c.Lookup(ctx, "d_total", "team-a", nil); !apierrors.IsNotFound(err) {
		t.Errorf("d_total in team-a: %v, want 404 (team-b's unlisted rule is not team-a's)", err)
	}
	var listed []string
	for k := range idx.All() {
		listed = append(listed, k)
	}
	if diff := cmp.Diff([]string{"a_total", "c_total"}, listed); diff != "" {
		t.Errorf("All lists each metric once (-want +got):\n%s", diff)
	}
	served := map[string]int{}
	for _, s := range idx.Served() {
		served[s.Metric]++
	}
	if served["c_total"] != 2 || served["a_total"] != 1 {
		t.Errorf("Served: %v, want c_total in two namespaces, a_total once", served)
	}
}

// A team's rule serves at most MaxTeamRuleMetrics metrics (discovery,
// which every namespace shares, lists them all); the rest are counted as
// dropped, and the file's rules have no such bound.
func TestATeamRuleServesABoundedNumberOfMetrics(t *testing.T) {
	c, file := newCatalog(t)
	team := teamRule(t, "team-a", "{__name__=~\".+\"}")
	r := discovery.Result{Series: map[string][]model.LabelSet{}}
	for i := range MaxTeamRuleMetrics + 50 {
		r.Series[team.SeriesQuery()] = append(r.Series[team.SeriesQuery()], model.LabelSet{"__name__": model.LabelValue(fmt.Sprintf("m%03d_total", i))})
	}
	c.SetRules(append(slices.Clone(file), team), r)
	if got, dropped := c.Index().Len(), c.Dropped()[team]; got != MaxTeamRuleMetrics || dropped != 50 {
		t.Errorf("the team's rule serves %d metrics and dropped %d, want %d and 50", got, dropped, MaxTeamRuleMetrics)
	}
}
