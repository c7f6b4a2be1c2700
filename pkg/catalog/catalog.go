// Package catalog keeps what the custom and the external metrics APIs can
// serve, as the last discovery round found it: for each metric, the rule
// and series that serve it; the definitions an earlier rule won over; the
// metrics of rules that are left out, and why; and the rules whose series
// were never listed. Both providers hold a Catalog, so that a metric is
// found, refused or reported the same way whichever API is asked.
//
// A Catalog is the lifecycle around one Index per discovery round: the
// rules (swapped by a reload), the round's series (from package
// discovery), an Index built from them by the provider's own Build
// function, swapped in atomically, logged when it changes, and reported in
// the adapter's metrics. Lookups never wait: they read the last Index.
//
// It does not know how a series becomes a metric of one API: Build does.
package catalog

import (
	"cmp"
	"context"
	"fmt"
	"iter"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// Source is what serves a metric: a rule and one series it discovered.
type Source struct {
	Rule   *rules.Rule
	Series string
}

// String names the source as logs and check-config do:
// "rules[0] series app_requests_total".
func (s Source) String() string { return fmt.Sprintf("%s series %s", s.Rule, s.Series) }

// Entry is one served metric: its source and how to query it (E, the
// provider's own).
type Entry[E any] struct {
	Source
	Value E
}

// Overlap is a metric two rules define: the first in the file serves it.
type Overlap struct {
	// Metric is the metric's name; Resource its resource ("pods"), empty
	// for external metrics.
	Metric, Resource string
	Kept, Ignored    Source
}

// Served describes one served metric for a person (check-config).
type Served struct {
	Source
	Metric, Resource string
	// Note qualifies the resource: "through its pods", "cluster-scoped".
	Note string
}

// Index is one discovery round's metrics. It is immutable once built.
type Index[K comparable, E any] struct {
	entries  map[K]Entry[E]
	sorted   []K
	refused  map[K]error
	overlaps []Overlap
	pending  error
	built    time.Time
	describe func(K, Entry[E]) Served
}

// Add serves k from e, unless an earlier rule serves it: rules are built in
// file order, so the first rule in the file wins, as the config documents.
// A definition lost to another rule is recorded as an Overlap.
func (x *Index[K, E]) Add(k K, e Entry[E]) {
	prev, dup := x.entries[k]
	if !dup {
		x.entries[k] = e
		return
	}
	if prev.Rule != e.Rule {
		d := x.describe(k, prev)
		ov := Overlap{Metric: d.Metric, Resource: d.Resource, Kept: prev.Source, Ignored: e.Source}
		if !slices.Contains(x.overlaps, ov) {
			x.overlaps = append(x.overlaps, ov)
		}
	}
	if prev.Source != e.Source {
		klog.V(2).InfoS("Metric defined twice; keeping the first definition", "metric", x.describe(k, prev).Metric,
			"kept", prev.String(), "ignored", e.String())
	}
}

// Refuse records that a rule left out (why) would have served k: a request
// for k, when no other rule serves it, is answered 404 with why.
func (x *Index[K, E]) Refuse(k K, why error) {
	if _, done := x.refused[k]; !done {
		x.refused[k] = why
	}
}

// Get returns the entry serving k.
func (x *Index[K, E]) Get(k K) (Entry[E], bool) {
	e, ok := x.entries[k]
	return e, ok
}

// Refused reports whether a rule left out would serve k (and no other rule
// does).
func (x *Index[K, E]) Refused(k K) bool {
	_, ok := x.refused[k]
	return ok
}

// Len is the number of served metrics.
func (x *Index[K, E]) Len() int { return len(x.entries) }

// All yields the served metrics in the Catalog's order.
func (x *Index[K, E]) All() iter.Seq2[K, Entry[E]] {
	return func(yield func(K, Entry[E]) bool) {
		for _, k := range x.sorted {
			if !yield(k, x.entries[k]) {
				return
			}
		}
	}
}

// Overlaps are the definitions earlier rules won over, sorted.
func (x *Index[K, E]) Overlaps() []Overlap { return slices.Clone(x.overlaps) }

// Pending says which rules' series were never listed, and why; nil when
// every rule's were.
func (x *Index[K, E]) Pending() error { return x.pending }

// Served describes every served metric, by the rules' order in the file,
// then metric and resource.
func (x *Index[K, E]) Served() []Served {
	out := make([]Served, 0, len(x.entries))
	for k, e := range x.All() {
		out = append(out, x.describe(k, e))
	}
	slices.SortStableFunc(out, func(a, b Served) int {
		return cmp.Or(cmp.Compare(a.Rule.Index, b.Rule.Index), strings.Compare(a.Metric, b.Metric), strings.Compare(a.Resource, b.Resource))
	})
	return out
}

// Config is what a Catalog needs of its API.
type Config[K comparable, E any] struct {
	// API names the API in logs and the adapter's metrics
	// (metrics.CustomAPI or metrics.ExternalAPI).
	API string
	// Section names the API's rules in errors ("rules", "externalRules").
	Section string
	// Name says what a metric is in errors ("metric requests-per-second
	// for pods"); it is called only for an error.
	Name func(K) string
	// Rules are the rules served until SetRules.
	Rules []*rules.Rule
	// Build adds to idx the metrics that rs serve from the round's series.
	Build func(rs []*rules.Rule, round discovery.Result, idx *Index[K, E])
	// Compare orders the metrics (ListAllMetrics, logs).
	Compare func(a, b K) int
	// Describe says what a metric is, for overlaps, logs and check-config.
	Describe func(K, Entry[E]) Served
	// NotFound is the 404 for a metric no rule serves; why, when not
	// empty, says which rule left out would have served it.
	NotFound func(k K, why string) error
}

// Catalog holds the rules of one API and the Index of their last
// discovery round.
type Catalog[K comparable, E any] struct {
	cfg Config[K, E]
	// mu guards rules and serialises builds.
	mu    sync.Mutex
	rules []*rules.Rule
	index atomic.Pointer[Index[K, E]]
}

// New returns a Catalog that serves nothing until the first Update.
func New[K comparable, E any](cfg Config[K, E]) *Catalog[K, E] {
	return &Catalog[K, E]{cfg: cfg, rules: cfg.Rules}
}

// Update builds the Index of a discovery round. Rules whose seriesQuery
// has never been listed serve nothing yet; lookups of unknown metrics say
// so (503) instead of answering 404.
func (c *Catalog[K, E]) Update(r discovery.Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.update(r)
}

// SetRules switches to new rules (a reloaded config) with the discovery
// round of their series. Requests in flight finish with the Index they
// started with.
func (c *Catalog[K, E]) SetRules(rs []*rules.Rule, r discovery.Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rules = rs
	c.update(r)
}

// Rules returns the rules served.
func (c *Catalog[K, E]) Rules() []*rules.Rule {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rules
}

// Served describes the metrics of the last discovery round and the
// definitions earlier rules won over; nil before the first round.
func (c *Catalog[K, E]) Served() ([]Served, []Overlap) {
	idx := c.index.Load()
	if idx == nil {
		return nil, nil
	}
	return idx.Served(), idx.Overlaps()
}

// Index returns the last discovery round's Index, or nil before the first.
func (c *Catalog[K, E]) Index() *Index[K, E] { return c.index.Load() }

// update builds and swaps in the Index; call it with c.mu held.
func (c *Catalog[K, E]) update(r discovery.Result) {
	idx := &Index[K, E]{entries: map[K]Entry[E]{}, refused: map[K]error{}, built: r.Time, describe: c.cfg.Describe}
	c.cfg.Build(c.rules, r, idx)
	for k := range idx.entries {
		delete(idx.refused, k) // another rule serves it
	}
	idx.pending = r.Pending(c.rules)
	idx.sorted = slices.SortedFunc(maps.Keys(idx.entries), c.cfg.Compare)
	slices.SortFunc(idx.overlaps, func(a, b Overlap) int {
		return cmp.Or(strings.Compare(a.Metric, b.Metric), strings.Compare(a.Resource, b.Resource), strings.Compare(a.Ignored.String(), b.Ignored.String()))
	})
	old := c.index.Swap(idx)
	if old == nil || old.Len() != idx.Len() {
		klog.InfoS("Discovered metrics", "api", c.cfg.API, "count", idx.Len(), "metrics", summarize(idx))
	} else {
		klog.V(4).InfoS("Discovered metrics", "api", c.cfg.API, "count", idx.Len())
	}
	perRule := map[*rules.Rule]int{}
	for _, e := range idx.entries {
		perRule[e.Rule]++
	}
	metrics.SetDiscoveredRules(c.cfg.API, c.rules, r.Listed, perRule)
}

// ErrNotDiscovered is the 503 before the first discovery round.
var ErrNotDiscovered = apierrors.NewServiceUnavailable("metric discovery has not completed yet")

// Lookup finds the entry serving k, and records it in the request's
// explain trace. Its errors are StatusErrors: 503 before
// the first discovery round, and for a metric no rule serves while some
// rules' series were never listed (it may be theirs); otherwise the API's
// 404, which says why when a rule left out would have served k.
func (c *Catalog[K, E]) Lookup(ctx context.Context, k K) (Entry[E], error) {
	idx := c.index.Load()
	if idx == nil {
		return Entry[E]{}, ErrNotDiscovered
	}
	if e, ok := idx.entries[k]; ok {
		explain.From(ctx).Rule(e.Rule.String(), e.Series)
		return e, nil
	}
	if idx.pending != nil {
		// A rule not listed yet may serve it.
		return Entry[E]{}, apierrors.NewServiceUnavailable(fmt.Sprintf(
			"%s is not known, and some %s could not list their series yet: %v", c.cfg.Name(k), c.cfg.Section, idx.pending))
	}
	if why, ok := idx.refused[k]; ok {
		return Entry[E]{}, c.cfg.NotFound(k, "the rule that would serve it is left out: "+why.Error())
	}
	return Entry[E]{}, c.cfg.NotFound(k, "")
}

// summarize names the first metrics of idx for the log.
func summarize[K comparable, E any](idx *Index[K, E]) string {
	const max = 20
	var names []string
	for k, e := range idx.All() {
		if len(names) == max {
			names = append(names, fmt.Sprintf("and %d more", idx.Len()-max))
			break
		}
		d := idx.describe(k, e)
		if d.Resource != "" {
			names = append(names, d.Resource+"/"+d.Metric)
		} else {
			names = append(names, d.Metric)
		}
	}
	return strings.Join(names, ", ")
}
