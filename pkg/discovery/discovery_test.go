package discovery

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"

	clocktesting "k8s.io/utils/clock/testing"
)

// fakeLister answers each query with its series, or fails the queries in
// failing.
type fakeLister struct {
	mu      sync.Mutex
	series  map[string][]model.LabelSet
	failing map[string]error
	starts  []time.Time
	ends    []time.Time
	// hook runs at each call, under mu.
	hook func()
	// calls are the selectors of each call.
	calls [][]string
}

func (f *fakeLister) Series(_ context.Context, matches []string, start, end time.Time) ([]model.LabelSet, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts = append(f.starts, start)
	f.ends = append(f.ends, end)
	if f.hook != nil {
		f.hook()
	}
	f.calls = append(f.calls, matches)
	// As Prometheus: the series of every selector, once each; any
	// failing selector fails the listing.
	var out []model.LabelSet
	seen := map[string]bool{}
	for _, m := range matches {
		if err := f.failing[m]; err != nil {
			return nil, err
		}
		for _, ls := range f.series[m] {
			if !seen[ls.String()] {
				seen[ls.String()] = true
				out = append(out, ls)
			}
		}
	}
	return out, nil
}

func (f *fakeLister) setFailing(q string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.failing, q)
		return
	}
	f.failing[q] = err
}

func newLister() *fakeLister {
	return &fakeLister{
		series: map[string][]model.LabelSet{
			"a": {{"__name__": "a_total", "pod": "p"}},
			"b": {{"__name__": "b_total", "pod": "p"}},
		},
		failing: map[string]error{},
	}
}

// fixed date: the start of the fake clock the lister reads.
var epoch = time.Unix(1_700_000_000, 0)

func TestRelistListsEachQueryOnceForTheRecentPast(t *testing.T) {
	l := newLister()
	clock := clocktesting.NewFakeClock(epoch)
	d := New(Config{Queries: []string{"a", "b", "a"}, Lister: l, Interval: time.Minute, MaxAge: 2 * time.Minute, Clock: clock})
	var got []Result
	d.Subscribe(func(r Result) { got = append(got, r) })
	d.Relist(context.Background())

	if len(l.starts) != 2 {
		t.Fatalf("listed %d times, want once per distinct query (2)", len(l.starts))
	}
	if !l.starts[0].Equal(epoch.Add(-2*time.Minute)) || !l.ends[0].Equal(epoch) {
		t.Errorf("listed from %v to %v, want the last --metrics-max-age (2m) up to now", l.starts[0], l.ends[0])
	}
	if len(got) != 1 || len(got[0].Series) != 2 || len(got[0].Failed) != 0 || !got[0].Time.Equal(epoch) {
		t.Fatalf("subscriber got %+v", got)
	}
	if !d.Listed() || d.Err() != nil {
		t.Errorf("Listed() = %v, Err() = %v after a good round", d.Listed(), d.Err())
	}
}

func TestAFailedQueryKeepsItsLastSeriesAndTheOthersMoveOn(t *testing.T) {
	l := newLister()
	d := New(Config{Queries: []string{"a", "b"}, Lister: l, Clock: clocktesting.NewFakeClock(epoch)})
	d.Relist(context.Background())

	l.setFailing("a", errors.New("connection refused"))
	l.mu.Lock()
	l.series["b"] = append(l.series["b"], model.LabelSet{"__name__": "b2_total", "pod": "p"})
	l.mu.Unlock()
	r := d.Relist(context.Background())

	if len(r.Series["a"]) != 1 {
		t.Errorf("the failed query's series = %v, want those of its last good listing", r.Series["a"])
	}
	if len(r.Series["b"]) != 2 {
		t.Errorf("the good query's series = %v, want the new listing", r.Series["b"])
	}
	if err := r.Failed["a"]; err == nil || len(r.Failed) != 1 {
		t.Errorf("Failed = %v, want only a", r.Failed)
	}
	err := d.Err()
	if err == nil || !strings.Contains(err.Error(), "seriesQuery a: connection refused") {
		t.Errorf("Err() = %v, want it to name the query and the cause", err)
	}
	if !d.Listed() {
		t.Error("Listed() = false, but every query was listed once")
	}
}

// blockingLister blocks the listing of slow until its context ends, and
// answers the other queries at once.
type blockingLister struct {
	*fakeLister
	slow string
}

func (b blockingLister) Series(ctx context.Context, matches []string, start, end time.Time) ([]model.LabelSet, error) {
	if matches[0] == b.slow {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return b.fakeLister.Series(ctx, matches, start, end)
}

// One slow seriesQuery costs only its own listing: the others, listed side
// by side under the round's deadline, are served; the slow one keeps the
// series of its last good listing.
func TestASlowListingDoesNotStarveTheOthers(t *testing.T) {
	l := newLister()
	l.series["c"] = []model.LabelSet{{"__name__": "c_total", "pod": "p"}}
	d := New(Config{Queries: []string{"a", "b", "c"}, Lister: l, Timeout: 200 * time.Millisecond, MaxConcurrentListings: 2})
	d.Relist(context.Background())

	slow := New(Config{Queries: []string{"a", "b", "c"}, Lister: blockingLister{fakeLister: l, slow: "a"}, Timeout: 200 * time.Millisecond, MaxConcurrentListings: 2})
	slow.last = d.last // as if the first round had listed a
	l.mu.Lock()
	l.series["b"] = append(l.series["b"], model.LabelSet{"__name__": "b2_total", "pod": "p"})
	l.mu.Unlock()
	start := time.Now()
	r := slow.Relist(context.Background())
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the round took %v, past its 200ms deadline", took)
	}
	if len(r.Failed) != 1 || !errors.Is(r.Failed["a"], context.DeadlineExceeded) {
		t.Errorf("Failed = %v, want only the slow query, at the round's deadline", r.Failed)
	}
	if len(r.Series["b"]) != 2 || len(r.Series["c"]) != 1 {
		t.Errorf("the other queries' series = %v and %v, want their new listings", r.Series["b"], r.Series["c"])
	}
	if len(r.Series["a"]) != 1 {
		t.Errorf("the slow query's series = %v, want those of its last good listing", r.Series["a"])
	}
}

func TestNeverListedQueriesAreNotListed(t *testing.T) {
	l := newLister()
	l.setFailing("b", errors.New("bad_data: parse error"))
	d := New(Config{Queries: []string{"a", "b"}, Lister: l, Clock: clocktesting.NewFakeClock(epoch)})
	if err := d.Err(); err == nil || !strings.Contains(err.Error(), "not run yet") {
		t.Errorf("Err() before any round = %v", err)
	}
	r := d.Relist(context.Background())
	if _, ok := r.Series["b"]; ok || d.Listed() {
		t.Errorf("Series[b] present = %v, Listed() = %v; want a query that never listed to be missing", ok, d.Listed())
	}
}

// TestRunBacksOffUntilListedThenKeepsTheInterval runs the loop in a
// synctest bubble, where time only moves when every goroutine waits: the
// first three rounds fail and are retried after 1 s, 2 s and 4 s; once a
// round succeeds the loop waits the whole relist interval and the error is
// cleared.
func TestRunBacksOffUntilListedThenKeepsTheInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLister()
		var calls []time.Duration
		start := time.Now()
		l.hook = func() {
			calls = append(calls, time.Since(start))
			if len(calls) == 4 {
				l.failing = map[string]error{} // Prometheus is back for round 4
			}
		}
		l.failing["a"] = errors.New("connection refused")
		d := New(Config{Queries: []string{"a"}, Lister: l, Interval: 30 * time.Second})
		var failedRounds int
		d.Subscribe(func(r Result) {
			if len(r.Failed) > 0 {
				failedRounds++
			}
		})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			d.Run(ctx)
		}()
		time.Sleep(70 * time.Second)
		synctest.Wait()
		cancel()
		<-done

		want := []time.Duration{0, time.Second, 3 * time.Second, 7 * time.Second, 37 * time.Second, 67 * time.Second}
		if len(calls) != len(want) {
			t.Fatalf("listed at %v, want %v", calls, want)
		}
		for i := range want {
			if calls[i] != want[i] {
				t.Errorf("round %d at %v, want %v (all: %v)", i+1, calls[i], want[i], calls)
			}
		}
		if failedRounds != 3 {
			t.Errorf("%d failed rounds, want 3", failedRounds)
		}
		if err := d.Err(); err != nil || !d.Listed() {
			t.Errorf("after recovery: Err() = %v, Listed() = %v", err, d.Listed())
		}
	})
}

func TestReady(t *testing.T) {
	l := newLister()
	d := New(Config{Queries: []string{"a", "b"}, Lister: l, Clock: clocktesting.NewFakeClock(epoch)})
	if err := d.Ready(); err == nil || !strings.Contains(err.Error(), "not run yet") {
		t.Errorf("before any round: %v", err)
	}
	l.setFailing("a", &promclient.QueryError{Expr: "a", Series: true, Err: errors.New("connection refused")})
	l.setFailing("b", &promclient.QueryError{Expr: "b", Series: true, Err: &v1.Error{Type: v1.ErrBadData, Msg: "parse error"}})
	d.Relist(context.Background())
	err := d.Ready()
	if err == nil || !strings.Contains(err.Error(), "seriesQuery a") || strings.Contains(err.Error(), "seriesQuery b") {
		t.Errorf("with Prometheus unreachable for a and b rejected: %v; want not ready for a only", err)
	}
	l.setFailing("a", nil)
	d.Relist(context.Background())
	if err := d.Ready(); err != nil {
		t.Errorf("once a listed, with b's rule broken: %v, want ready", err)
	}
	// Ready stays once listed, even if a later round fails: the last
	// series are served.
	l.setFailing("a", errors.New("connection refused"))
	d.Relist(context.Background())
	if err := d.Ready(); err != nil {
		t.Errorf("after a failed round: %v, want ready", err)
	}
}

// TestReconfigureSwitchesQueriesAtOnce: a reloaded config's queries are
// listed right away and handed to apply, not to the subscribers; a query
// that stays keeps its last series when its new listing fails; a query
// that goes is forgotten, so readiness does not wait for it.
func TestReconfigureSwitchesQueriesAtOnce(t *testing.T) {
	l := newLister()
	l.series["c"] = []model.LabelSet{{"__name__": "c_total", "pod": "p"}}
	clock := clocktesting.NewFakeClock(epoch)
	d := New(Config{Queries: []string{"a", "b"}, Lister: l, Interval: time.Minute, Clock: clock})
	var subscribed []Result
	d.Subscribe(func(r Result) { subscribed = append(subscribed, r) })
	d.Relist(context.Background())

	clock.Step(time.Second)
	l.setFailing("a", errors.New("boom"))
	var applied []Result
	r := d.Reconfigure(context.Background(), Queries{File: []string{"a", "c", "c"}}, func(r Result) { applied = append(applied, r) })

	if len(subscribed) != 1 || len(applied) != 1 {
		t.Fatalf("subscribers got %d rounds, apply %d; want 1 and 1", len(subscribed), len(applied))
	}
	if _, ok := r.Series["b"]; ok {
		t.Errorf("the dropped query b still has series: %v", r.Series)
	}

	if got := r.Series["a"]; len(got) != 1 || r.Failed["a"] == nil {
		t.Errorf("query a: series %v, failure %v; want its last listing kept and the failure reported", got, r.Failed["a"])
	}
	if got := r.Series["c"]; len(got) != 1 || !r.Listed["c"].Equal(epoch.Add(time.Second)) {
		t.Errorf("query c: series %v listed %v; want it listed now", got, r.Listed["c"])
	}
	if !r.Listed["a"].Equal(epoch) {
		t.Errorf("query a last listed %v, want the first round's time", r.Listed["a"])
	}

	l.setFailing("a", nil)
	d.Relist(context.Background())
	if len(subscribed) != 2 || len(subscribed[1].Series) != 2 || !d.Listed() {
		t.Fatalf("the next round lists the new queries for the subscribers: %+v, listed %v", subscribed[1], d.Listed())
	}
	if err := d.Ready(); err != nil {
		t.Errorf("Ready() = %v after every new query was listed", err)
	}

	// A reload adding a query Prometheus cannot list now: the adapter
	// stays ready (it serves what it has); the failure is reported.
	l.setFailing("d", errors.New("timeout"))
	r = d.Reconfigure(context.Background(), Queries{File: []string{"a", "c", "d"}}, func(Result) {})
	if r.Failed["d"] == nil || d.Err() == nil {
		t.Errorf("the failing new query is not reported: %v / %v", r.Failed, d.Err())
	}
	if err := d.Ready(); err != nil {
		t.Errorf("Ready() = %v after a reload whose new query failed; a ready adapter stays ready", err)
	}
}

func TestPendingNamesTheRulesNeverListed(t *testing.T) {
	cfg, err := config.Parse([]byte(`
rules:
- seriesQuery: 'listed{namespace!="",pod!=""}'
  resources: {template: <<.Resource>>}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
- seriesQuery: 'failing{namespace!="",pod!=""}'
  resources: {template: <<.Resource>>}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
- seriesQuery: 'waiting{namespace!="",pod!=""}'
  resources: {template: <<.Resource>>}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
`), "pending.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.CompileSet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rs := set.Custom
	boom := errors.New("connection refused")
	r := Result{
		Series: map[string][]model.LabelSet{rs[0].SeriesQuery(): nil},
		Failed: map[string]error{rs[1].SeriesQuery(): boom},
	}
	err = r.Pending(rs)
	if !errors.Is(err, boom) {
		t.Errorf("Pending = %v, want it to wrap the failed listing's error", err)
	}
	for _, want := range []string{"rules[1]: connection refused", "rules[2]: not listed yet"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Pending = %v, want it to say %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "rules[0]") {
		t.Errorf("Pending = %v names rules[0], whose series were listed", err)
	}
	if err := (Result{Series: map[string][]model.LabelSet{rs[0].SeriesQuery(): nil, rs[1].SeriesQuery(): nil, rs[2].SeriesQuery(): nil}}).Pending(rs); err != nil {
		t.Errorf("Pending with every series listed = %v, want nil", err)
	}
}

// A team's listings have a budget of their own: a slow one is cut at the
// team's deadline, one with more series than MaxSeries fails, and neither
// holds back readiness, the file's listings or the log's errors.
func TestTeamListingsHaveTheirOwnBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLister()
		l.series["big"] = []model.LabelSet{{"__name__": "big", "pod": "a"}, {"__name__": "big", "pod": "b"}, {"__name__": "big", "pod": "c"}, {"__name__": "big", "pod": "d"}}
		l.series["small"] = []model.LabelSet{{"__name__": "small", "pod": "a"}, {"__name__": "small", "pod": "b"}}
		lister := blockingLister{fakeLister: l, slow: "slow"}
		d := New(Config{Queries: []string{"a", "b"}, TeamQueries: map[string][]string{"t1": {"slow"}, "t2": {"big"}, "t3": {"small", "a"}}, Lister: lister,
			Timeout: time.Minute, Team: TeamLimits{Timeout: time.Second, MaxSeries: 3, MaxConcurrent: 1}})
		start := time.Now()
		r := d.Relist(context.Background())
		if took := time.Since(start); took != time.Second {
			t.Errorf("the round took %v, want the team's deadline (1s): the file's listings are quick", took)
		}
		if !errors.Is(r.Failed["slow"], context.DeadlineExceeded) {
			t.Errorf("the slow team listing: %v, want its deadline", r.Failed["slow"])
		}
		if err := r.Failed["big"]; !errors.Is(err, ErrTooManySeries) || !strings.Contains(err.Error(), "--metric-rules-max-series") {
			t.Errorf("a team listing of 4 series, 3 allowed: %v", err)
		}
		if len(r.Series["small"]) != 2 || len(r.Series["a"]) != 1 || len(r.Series["b"]) != 1 {
			t.Errorf("series: %v", r.Series)
		}
		if err := d.Ready(); err != nil {
			t.Errorf("Ready() = %v: a team's listing never listed holds back readiness", err)
		}
		if err := d.Err(); err != nil {
			t.Errorf("Err() = %v, want only the file's failures", err)
		}
	})
}

// The file's own listings are not bounded by the team's MaxSeries, and a
// selector both use is the file's.
func TestQueriesOfSplitsTheFilesFromTheTeams(t *testing.T) {
	file, err := rules.Parse([]byte("rules:\n- seriesQuery: a\n  metricsQuery: sum(<<.Series>>)\n- seriesQuery: a\n  metricsQuery: max(<<.Series>>)\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	team, err := rules.CompileTeam(rules.TeamRule{Namespace: "t", Name: "r", External: true, Rule: config.Rule{SeriesQuery: "b", MetricsQuery: "sum(<<.Series>>)"}}, "namespace")
	if err != nil {
		t.Fatal(err)
	}
	q := QueriesOf(append(file.Custom, team))
	if len(q.File) != 1 || q.File[0] != "a" || len(q.Team) != 1 || len(q.Team["t"]) != 1 || q.Team["t"][0] != `b{namespace="t"}` {
		t.Errorf("QueriesOf = %+v", q)
	}
	l := newLister()
	l.series["a"] = []model.LabelSet{{"__name__": "x"}, {"__name__": "y"}, {"__name__": "z"}, {"__name__": "w"}}
	d := New(Config{Queries: q.File, TeamQueries: map[string][]string{"t": append(q.Team["t"], "a")}, Lister: l, Team: TeamLimits{MaxSeries: 1}})
	if r := d.Relist(context.Background()); len(r.Series["a"]) != 4 {
		t.Errorf("the file's listing of 4 series: %v, %v", r.Series["a"], r.Failed["a"])
	}
}

// A series whose name is not a legacy metric name (Prometheus 3 takes any
// UTF-8) is dropped: pasted into a rule's PromQL as .Series, it would
// change the query's shape.
func TestSeriesWithInvalidNamesAreDropped(t *testing.T) {
	l := newLister()
	l.series["a"] = []model.LabelSet{
		{"__name__": "app_requests_total", "pod": "p"},
		{"__name__": `x{namespace="team-a"}) or label_replace(up, "pod", "p", "", "")) by (pod) #`, "pod": "p"},
		{"__name__": "http.server.duration", "pod": "p"},
	}
	d := New(Config{Queries: []string{"a"}, Lister: l})
	r := d.Relist(context.Background())
	if len(r.Series["a"]) != 1 || r.Series["a"][0]["__name__"] != "app_requests_total" {
		t.Errorf("series = %v, want the valid name only", r.Series["a"])
	}
}

// A namespace's MetricRules are listed in one listing, and each selector
// gets the series it matches; a listing a selector makes fail is retried
// one selector at a time, so only that selector fails; the bound is the
// namespace's.
func TestANamespacesSelectorsAreListedTogether(t *testing.T) {
	l := newLister()
	a, b := `a_total{namespace="t"}`, `{__name__=~"b_.*",namespace="t"}`
	l.series[a] = []model.LabelSet{{"__name__": "a_total", "namespace": "t", "pod": "p"}}
	l.series[b] = []model.LabelSet{{"__name__": "b_total", "namespace": "t", "pod": "p"}, {"__name__": "b_other", "namespace": "t"}}
	d := New(Config{TeamQueries: map[string][]string{"t": {a, b}}, Lister: l, Team: TeamLimits{MaxSeries: 10}})
	r := d.Relist(context.Background())
	if len(l.calls) != 1 || len(l.calls[0]) != 2 {
		t.Errorf("listings: %v, want one with both selectors", l.calls)
	}
	if len(r.Series[a]) != 1 || len(r.Series[b]) != 2 || r.Series[a][0]["__name__"] != "a_total" {
		t.Errorf("series by selector: %v", r.Series)
	}

	bad := `c_total{namespace="t"}`
	l.setFailing(bad, errors.New("bad_data: refused"))
	d = New(Config{TeamQueries: map[string][]string{"t": {a, bad}}, Lister: l, Team: TeamLimits{MaxSeries: 10}})
	r = d.Relist(context.Background())
	if len(r.Series[a]) != 1 || r.Failed[bad] == nil || r.Failed[a] != nil {
		t.Errorf("with a refused selector: series %v, failed %v; want only it failed", r.Series, r.Failed)
	}

	d = New(Config{TeamQueries: map[string][]string{"t": {a, b}}, Lister: l, Team: TeamLimits{MaxSeries: 2}})
	r = d.Relist(context.Background())
	if !errors.Is(r.Failed[a], ErrTooManySeries) || !errors.Is(r.Failed[b], ErrTooManySeries) || !strings.Contains(r.Failed[a].Error(), "namespace t") {
		t.Errorf("three series of namespace t, two allowed: %v", r.Failed)
	}
}

// A listing on a named store goes to that store's lister, the same
// selector on the default store to the default one; a store nobody has
// is a failed listing, not a panic.
func TestListingsGoToTheirStore(t *testing.T) {
	def, east := newLister(), newLister()
	east.series["a"] = []model.LabelSet{{"__name__": "a_total", "pod": "east"}}
	d := New(Config{Queries: []string{"a", rules.ListingOf("east", "a"), rules.ListingOf("north", "a")}, Lister: def,
		Backends: func(name string) SeriesLister {
			if name == "east" {
				return east
			}
			return nil
		}})
	r := d.Relist(context.Background())
	if got := r.Series[rules.ListingOf("east", "a")]; len(got) != 1 || got[0]["pod"] != "east" {
		t.Errorf("the east listing: %v", got)
	}
	if got := r.Series["a"]; len(got) != 1 || got[0]["pod"] != "p" {
		t.Errorf("the default listing: %v", got)
	}
	if err := r.Failed[rules.ListingOf("north", "a")]; err == nil || !strings.Contains(err.Error(), `no store is named "north"`) {
		t.Errorf("a store nobody has: %v", err)
	}
}
