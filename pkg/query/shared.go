package query

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"golang.org/x/sync/singleflight"

	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
)

// Sharing answers the queries about objects of one rule, namespace and
// metric selector (a Shape) from one query covering every object asked for
// recently, which it refreshes in the background while they keep being
// asked for (Run). An answer is never older than MaxAge: past it, the
// request queries itself, and gets Prometheus' error if Prometheus fails.
// Only a rule whose value for an object comes from that object's series
// alone shares (promql.PerObject); the others are queried per request.
type Sharing struct {
	// MaxAge bounds the age of a shared answer (since its query was sent).
	MaxAge time.Duration
	stores Stores

	mu     sync.Mutex
	groups map[string]*group
	// why is, per shape key, why it is not shared.
	why    map[string]string
	flight singleflight.Group
}

// NewSharing shares queries on stores, each answer at most maxAge old.
func NewSharing(stores Stores, maxAge time.Duration) *Sharing {
	return &Sharing{MaxAge: maxAge, stores: stores, groups: map[string]*group{}, why: map[string]string{}}
}

// Shape is one kind of query about objects: a rule's query in one
// namespace with one metric selector, grouped by the label that names the
// objects.
type Shape struct {
	// Key tells shapes apart: the rule, its series, the namespace, the
	// label and the metric selector.
	Key string
	// Rule names the rule (rules[0]) in the adapter's metrics.
	Rule string
	// Label names the objects in the series.
	Label string
	// Query is the query about the objects whose label has one of values.
	Query func(values []string) Many
	// Combined is a shape whose caller asks for sets of label values (an
	// object's pods) and combines their series into one value as the
	// rule's outermost aggregation does: it shares only when that is sum,
	// min, max or count (Shared.Aggregation).
	Combined bool
}

// group is one shape's shared answer and the objects asked for.
type group struct {
	shape Shape
	// asked is when each label value was last asked for.
	asked map[string]time.Time
	// answer is the last answer, the values it covers, and when its query
	// was sent.
	answer  model.Vector
	expr    string
	covered map[string]bool
	at      time.Time
	// aggregation is the query's outermost aggregation, for a Combined
	// shape.
	aggregation string
}

// Shared is a shared answer: the series of the objects asked for, and its
// age.
type Shared struct {
	Result
	Age time.Duration
	// Aggregation combines the series of a Combined shape's set: sum,
	// min, max or count.
	Aggregation string
}

// shareProbe is the label value a shape's query is rendered for to check
// that it can be shared: no object has it.
const shareProbe = "__shared_query_probe__"

// Answer answers a query about the objects of shape whose label has one of
// values: from the shape's shared answer when it covers them and is at
// most MaxAge old, else from a query of every object asked for recently
// (shared with the requests missing at the same time). It reports false
// when the shape cannot be shared: its caller queries alone.
func (s *Sharing) Answer(ctx context.Context, shape Shape, values []string) (Shared, bool, error) {
	now := time.Now()
	s.mu.Lock()
	g, ok := s.groups[shape.Key]
	if !ok {
		if why, known := s.why[shape.Key]; known {
			s.mu.Unlock()
			trace.From(ctx).NotShared(why)
			return Shared{}, false, nil
		}
		s.mu.Unlock()
		aggregation, why := shareable(shape)
		if why != "" {
			s.mu.Lock()
			s.why[shape.Key] = why
			s.mu.Unlock()
			klog.V(2).InfoS("A rule's queries are not shared", "rule", shape.Rule, "reason", why)
			trace.From(ctx).NotShared(why)
			return Shared{}, false, nil
		}
		s.mu.Lock()
		if g, ok = s.groups[shape.Key]; !ok {
			g = &group{shape: shape, asked: map[string]time.Time{}, aggregation: aggregation}
			s.groups[shape.Key] = g
		}
	}
	g.shape = shape // the newest closure: a reload may have changed the rule's objects
	for _, v := range values {
		g.asked[v] = now
	}
	if out, ok := g.answerFor(values, now, s.MaxAge); ok {
		s.mu.Unlock()
		metrics.ObserveShared(shape.Rule, metrics.SharedFromAnswer, out.Age)
		trace.From(ctx).Queried(trace.Query{Rule: shape.Rule, Expr: out.Expr, Vector: out.Vector, Shared: true, Age: out.Age})
		return out, true, nil
	}
	s.mu.Unlock()
	// Missing (new objects, or an answer too old): one query for every
	// object asked for, shared by the requests that miss together. It
	// must not die with the request that started it, only with its own
	// deadline.
	ch := s.flight.DoChan(shape.Key, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedRunTimeout)
		defer cancel()
		return nil, s.refresh(rctx, shape.Key)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return Shared{}, true, r.Err
		}
	case <-ctx.Done():
		return Shared{}, true, apistatus.Ended(ctx.Err(), "waiting for the query it shares with other requests")
	}
	s.mu.Lock()
	out, ok := g.answerFor(values, time.Now(), s.MaxAge)
	s.mu.Unlock()
	if !ok {
		// The group was forgotten meanwhile (a reload), or another
		// request's refresh ran without these objects: this one queries
		// alone.
		return Shared{}, false, nil
	}
	metrics.ObserveShared(shape.Rule, metrics.SharedFromQuery, out.Age)
	return out, true, nil
}

// sharedRunTimeout bounds a shared query run for requests: the generic
// API server's default request timeout.
const sharedRunTimeout = time.Minute

// answerFor is the shared answer's series for values, when it covers them
// all and is at most maxAge old. Callers hold s.mu.
func (g *group) answerFor(values []string, now time.Time, maxAge time.Duration) (Shared, bool) {
	if g.answer == nil || now.Sub(g.at) > maxAge {
		return Shared{}, false
	}
	want := make(map[string]bool, len(values))
	for _, v := range values {
		if !g.covered[v] {
			return Shared{}, false
		}
		want[v] = true
	}
	var vec model.Vector
	for _, smp := range g.answer {
		if want[string(smp.Metric[model.LabelName(g.shape.Label)])] {
			vec = append(vec, smp)
		}
	}
	if vec == nil {
		vec = model.Vector{}
	}
	return Shared{Result: Result{Expr: g.expr, Vector: vec}, Age: now.Sub(g.at), Aggregation: g.aggregation}, true
}

// shareable says why not when shape's query does not give each object the
// value its own query would; for a Combined shape, it returns the
// aggregation that combines a set's values.
func shareable(shape Shape) (aggregation, whyNot string) {
	probe := shape.Query([]string{shareProbe})
	expr, err := probe.Query(nil).Render()
	if err != nil {
		return "", "its query does not render: " + err.Error()
	}
	if err := promql.PerObject(expr, shape.Label, shareProbe); err != nil {
		return "", err.Error()
	}
	if shape.Combined {
		if aggregation = promql.OutermostAggregation(expr); aggregation == "" {
			return "", "the value of an object's pods is not a sum, min, max or count of each pod's"
		}
	}
	return aggregation, ""
}

// refresh queries every object of the group key asked for within
// forgetAfter, and keeps the answer. ctx is a request's (its trace records
// the query) or the refresher's.
func (s *Sharing) refresh(ctx context.Context, key string) error {
	now := time.Now()
	s.mu.Lock()
	g, ok := s.groups[key]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("no shared query %q", key)
	}
	var values []string
	for v, t := range g.asked {
		if now.Sub(t) > s.forgetAfter() {
			delete(g.asked, v)
			continue
		}
		values = append(values, v)
	}
	slices.Sort(values)
	shape := g.shape
	s.mu.Unlock()
	if len(values) == 0 {
		return nil
	}
	res, err := RunMany(ctx, s.stores, shape.Query(values))
	if err != nil {
		metrics.ObserveSharedRefresh(shape.Rule, err)
		return err
	}
	metrics.ObserveSharedRefresh(shape.Rule, nil)
	covered := make(map[string]bool, len(values))
	for _, v := range values {
		covered[v] = true
	}
	s.mu.Lock()
	g.answer, g.expr, g.covered, g.at = res.Vector, res.Expr, covered, now
	s.mu.Unlock()
	return nil
}

// refreshAfter is the age at which Run refreshes a shared answer: a third
// of MaxAge, so that requests find one younger than MaxAge, and an HPA
// syncing every 15 s reads a new answer at each sync when MaxAge is at
// most 45 s (at half of 30 s, a refresh every 15 to 19 s, two syncs in a
// row could read the same answer, and the HPA's metric stood still for
// up to 41 s in make bench-fleet).
func (s *Sharing) refreshAfter() time.Duration { return s.MaxAge / 3 }

// forgetAfter is how long an object stays in its shape's query without
// being asked for: four times MaxAge (an HPA asks every 15 s).
func (s *Sharing) forgetAfter() time.Duration { return 4 * s.MaxAge }

// Run refreshes every shape's answer when it is a third of MaxAge old (see
// refreshAfter), and forgets shapes nobody asked for within four times
// MaxAge, until ctx ends. At most parallel refreshes run at once.
func (s *Sharing) Run(ctx context.Context, parallel int) {
	tick := time.NewTicker(max(s.refreshAfter()/4, 100*time.Millisecond))
	defer tick.Stop()
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		var due []string
		s.mu.Lock()
		for key, g := range s.groups {
			last := time.Time{}
			for _, t := range g.asked {
				if t.After(last) {
					last = t
				}
			}
			switch {
			case now.Sub(last) > s.forgetAfter():
				delete(s.groups, key)
			case now.Sub(g.at) >= s.refreshAfter():
				due = append(due, key)
			}
		}
		metrics.SetSharedQueries(len(s.groups))
		s.mu.Unlock()
		for _, key := range due {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Go(func() {
				defer func() { <-sem }()
				rctx, cancel := context.WithTimeout(ctx, s.MaxAge)
				defer cancel()
				_, err, _ := s.flight.Do(key, func() (any, error) { return nil, s.refresh(rctx, key) })
				if err != nil {
					klog.V(2).InfoS("Refreshing a shared query failed; requests query themselves once its answer is older than the bound", "key", key, "err", err)
				}
			})
		}
	}
}

// Reset forgets every shared answer (the rules changed).
func (s *Sharing) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.groups)
	clear(s.why)
}
