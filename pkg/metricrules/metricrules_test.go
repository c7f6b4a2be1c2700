package metricrules

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/catalog"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

var t0 = time.Now()

func object(ns, name string, created time.Duration, spec v1alpha1.MetricRuleSpec) *v1alpha1.MetricRule {
	return &v1alpha1.MetricRule{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name), Generation: 1,
			CreationTimestamp: metav1.NewTime(t0.Add(created))},
		Spec: spec,
	}
}

func spec(series, as string) v1alpha1.MetricRuleSpec {
	return v1alpha1.MetricRuleSpec{
		API: v1alpha1.Custom, SeriesQuery: series,
		Resources: v1alpha1.ResourceMapping{Overrides: map[string]v1alpha1.GroupResource{
			"namespace": {Resource: "namespace"}, "pod": {Resource: "pod"},
		}},
		Name:         v1alpha1.NameMapping{As: as},
		MetricsQuery: "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)",
	}
}

// A namespace's rules are served oldest first up to the limit; a rule that
// does not compile is refused with the field; another namespace has its
// own limit; an unchanged object keeps its compiled rule.
func TestCompile(t *testing.T) {
	bad := spec("x", "bad")
	bad.MetricsQuery = "sum(<<.Series>>{<<.LabelMatchers>>}"
	objs := []*v1alpha1.MetricRule{
		object("a", "third", 3*time.Second, spec("c_total", "c")),
		object("a", "first", time.Second, spec("a_total", "a")),
		object("a", "second", 2*time.Second, bad),
		object("b", "only", 4*time.Second, spec("a_total", "a")),
	}
	cache := NewCache()
	out := Compile(objs, "namespace", 2, nil, cache)
	got := make([]string, len(out))
	for i, o := range out {
		switch {
		case o.OverLimit:
			got[i] = o.Object.Name + ":over"
		case o.Err != nil:
			got[i] = o.Object.Name + ":invalid"
			if !strings.Contains(o.Err.Error(), "spec.metricsQuery") {
				t.Errorf("%s: %v, want the field named", o.Object.Name, o.Err)
			}
		default:
			got[i] = o.Object.Name + ":" + o.Rule.String()
		}
	}
	want := []string{"first:MetricRule a/first", "second:invalid", "third:over", "only:MetricRule b/only"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("got %v, want %v", got, want)
	}
	again := Compile(objs, "namespace", 2, nil, cache)
	if again[0].Rule != out[0].Rule {
		t.Error("an unchanged object was compiled again")
	}
	objs[1].Generation = 2
	if changed := Compile(objs, "namespace", 2, nil, cache); changed[0].Rule == out[0].Rule {
		t.Error("a new generation kept the old rule")
	}
}

// The status says what the adapter made of a rule: accepted, its confined
// seriesQuery, the series and metrics of the last round, and what
// overrules it.
func TestStatus(t *testing.T) {
	objs := []*v1alpha1.MetricRule{object("a", "mine", 0, spec("a_total", "a")), object("a", "late", time.Second, spec("b_total", "a"))}
	out := Compile(objs, "namespace", 0, nil, NewCache())
	mine, late := out[0], out[1]

	st := Status(mine, nil)
	if c := cond(st, v1alpha1.Accepted); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Accepted: %+v", c)
	}
	if c := cond(st, v1alpha1.Serving); c == nil || c.Status != metav1.ConditionUnknown {
		t.Errorf("Serving before a round: %+v", c)
	}
	if st.SeriesQuery != `a_total{namespace="a"}` || st.ObservedGeneration != 1 {
		t.Errorf("seriesQuery %q, observedGeneration %d", st.SeriesQuery, st.ObservedGeneration)
	}

	listed := t0.Add(time.Minute)
	round := discovery.Result{
		Series: map[string][]model.LabelSet{
			mine.Rule.SeriesQuery(): {{"__name__": "a_total", "namespace": "a", "pod": "p"}},
			late.Rule.SeriesQuery(): {{"__name__": "b_total", "namespace": "a", "pod": "p"}},
		},
		Listed: map[string]time.Time{mine.Rule.SeriesQuery(): listed},
	}
	obs := &Observation{
		Round:  round,
		Served: []catalog.Served{{Source: catalog.Source{Rule: mine.Rule, Series: "a_total"}, Metric: "a", Resource: "pods"}},
		Overlaps: []catalog.Overlap{{Metric: "a", Resource: "pods",
			Kept: catalog.Source{Rule: mine.Rule, Series: "a_total"}, Ignored: catalog.Source{Rule: late.Rule, Series: "b_total"}}},
	}
	st = Status(mine, obs)
	if c := cond(st, v1alpha1.Serving); c == nil || c.Status != metav1.ConditionTrue || st.Series != 1 ||
		len(st.Metrics) != 1 || st.Metrics[0] != "pods/a" || st.LastDiscoveryTime == nil || !st.LastDiscoveryTime.Equal(&metav1.Time{Time: listed.Truncate(time.Second)}) {
		t.Errorf("serving rule: %+v", st)
	}
	st = Status(late, obs)
	if c := cond(st, v1alpha1.Serving); c == nil || c.Status != metav1.ConditionFalse || c.Reason != "Conflict" || !strings.Contains(c.Message, "MetricRule a/mine serves pods/a") {
		t.Errorf("overruled rule: %+v", c)
	}

	// A status read back is not written again.
	st = Status(mine, obs)
	mine.Object.Status = st
	if again := Status(mine, obs); needsWrite(st, again) {
		t.Errorf("an unchanged status would be written again:\n%+v\n%+v", st, again)
	}
	later := *obs
	later.Round.Listed = map[string]time.Time{mine.Rule.SeriesQuery(): listed.Add(time.Minute)}
	if needsWrite(st, Status(mine, &later)) {
		t.Error("a newer lastDiscoveryTime alone is written every round")
	}
	later.Round.Listed = map[string]time.Time{mine.Rule.SeriesQuery(): listed.Add(refreshEvery)}
	if !needsWrite(st, Status(mine, &later)) {
		t.Error("a lastDiscoveryTime refreshEvery old is never refreshed")
	}
}

func cond(st v1alpha1.MetricRuleStatus, typ string) *metav1.Condition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == typ {
			return &st.Conditions[i]
		}
	}
	return nil
}

// The controller serves the accepted rules, writes each object's status
// from its workqueue (a write refused with a conflict is retried), and
// makes a failed query of a rule an Event on its object.
func TestControllerWritesStatusAndRecordsFailedQueries(t *testing.T) {
	mr := object("team-a", "rps", 0, spec("a_total", "a"))
	mr.TypeMeta = metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "MetricRule"}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mr)
	if err != nil {
		t.Fatal(err)
	}
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{v1alpha1.Resource: "MetricRuleList"}, &unstructured.Unstructured{Object: u})
	conflicts := 0
	client.PrependReactor("update", "metricrules", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() == "status" && conflicts == 0 {
			conflicts++
			return true, nil, apierrors.NewConflict(v1alpha1.Resource.GroupResource(), "rps", errors.New("changed"))
		}
		return false, nil, nil
	})
	events := record.NewFakeRecorder(10)
	budgets := query.NewBudgets(0, 0)
	var served atomic.Int32
	c := NewController(ControllerConfig{Client: client, NamespaceLabel: "namespace", Budgets: budgets, Events: events,
		Apply: func(_ context.Context, custom, _ []*rules.Rule) { served.Store(int32(len(custom))) }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)

	var st v1alpha1.MetricRuleStatus
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := client.Resource(v1alpha1.Resource).Namespace("team-a").Get(ctx, "rps", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		raw, ok := got.Object["status"].(map[string]any)
		if !ok {
			return false, nil
		}
		st = v1alpha1.MetricRuleStatus{}
		return runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &st) == nil && cond(st, v1alpha1.Accepted) != nil, nil
	}); err != nil {
		t.Fatalf("no status written: %+v", st)
	}
	if conflicts != 1 || served.Load() != 1 || !c.Leading() || c.Ready() != nil {
		t.Errorf("conflicts %d, rules served %d, leading %v, ready %v", conflicts, served.Load(), c.Leading(), c.Ready())
	}
	if a := cond(st, v1alpha1.Accepted); a.Status != metav1.ConditionTrue || st.SeriesQuery != `a_total{namespace="team-a"}` {
		t.Errorf("status: %+v", st)
	}

	_, err = query.Run(ctx, query.Stores{Default: failing{}}, query.Query{Rule: "MetricRule team-a/rps", Namespace: "team-a", Budgets: budgets,
		What: func() string { return "a" }, Render: func() (string, error) { return "up", nil }})
	if err == nil {
		t.Fatal("the failing query did not fail")
	}
	select {
	case e := <-events.Events:
		if !strings.HasPrefix(e, "Warning QueryFailed ") || !strings.Contains(e, "no Prometheus") {
			t.Errorf("event %q, want a QueryFailed warning with the error", e)
		}
	case <-time.After(5 * time.Second):
		t.Error("no Event for the failed query")
	}
}

type failing struct{}

func (failing) Query(context.Context, string) (model.Vector, error) {
	return nil, errors.New("no Prometheus")
}

// A compilation that outlives its deadline is refused while it still runs
// (it returns only once released, after the refusal), and ends on its own.
func TestACompilationPastItsDeadlineIsRefused(t *testing.T) {
	release, finished := make(chan struct{}), make(chan struct{})
	r, err := compileWithin(50*time.Millisecond, "team-a", func() (*rules.Rule, error) {
		defer close(finished)
		<-release
		return &rules.Rule{}, nil
	})
	if r != nil || err == nil || !strings.Contains(err.Error(), "longer than 50ms") {
		t.Fatalf("a compilation that never ends: %v, %v; want it refused past its deadline", r, err)
	}
	close(release)
	<-finished

	want := &rules.Rule{}
	if r, err := compileWithin(time.Minute, "team-a", func() (*rules.Rule, error) { return want, nil }); r != want || err != nil {
		t.Errorf("a compilation within its deadline: %v, %v; want its rule", r, err)
	}
}

// A status quotes at most MaxMessage bytes of a message, on a UTF-8
// boundary, and says how long the whole was.
func TestStatusMessagesAreExcerpts(t *testing.T) {
	short := "no series"
	if got := message(short); got != short {
		t.Errorf("a short message became %q", got)
	}
	long := strings.Repeat("é", MaxMessage) // 2 bytes each
	got := message(long)
	if len(got) > MaxMessage+32 || !strings.HasSuffix(got, fmt.Sprintf("... (%d bytes)", len(long))) || !utf8.ValidString(got) {
		t.Errorf("a %d-byte message became %d bytes: %q...", len(long), len(got), got[:40])
	}
}
