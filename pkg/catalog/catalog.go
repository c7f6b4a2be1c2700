// Package catalog keeps what the custom and the external metrics APIs can
// serve, as the last discovery round found it: for each metric, the rule
// and series that serve it; the definitions an earlier rule won over; the
// metrics of rules that are left out, and why; and the rules whose series
// were never listed. Both providers hold a Catalog, so that a metric is
// found, refused or reported the same way whichever API is asked, and a
// metric is an upstream's unless a rule serves it in the request's
// namespace (Serves, Upstreams).
//
// An Entry is one served metric: its Source (the rule and the series) and
// the provider's own value saying how to query it. An Overlap is a metric
// two rules define; Served describes a served metric for a person.
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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
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

// scoped is a metric in a namespace: "" for a rule of the file, served in
// every namespace; a namespace for a team's rule (rules.Rule.Namespace),
// served in that namespace only.
type scoped[K comparable] struct {
	key K
	ns  string
}

// Index is one discovery round's metrics. It is immutable once built.
type Index[K comparable, E any] struct {
	entries map[scoped[K]]Entry[E]
	// scopes are the namespaces each metric is served in, sorted: "" (the
	// file's rules, every namespace) first.
	scopes map[K][]string
	// sorted are the distinct metrics, in the Catalog's order.
	sorted   []K
	refused  map[K]error
	overlaps []Overlap
	// pending says which of the file's rules were never listed;
	// pendingIn, which of a namespace's team rules.
	pending   error
	pendingIn map[string]error
	built     time.Time
	describe  func(K, Entry[E]) Served
	// teamMetrics counts the metrics each team's rule serves; dropped,
	// those it would serve past MaxTeamRuleMetrics.
	teamMetrics, dropped map[*rules.Rule]int
	// tenants holds, for each listing on a store with a tenant per
	// namespace, the series names of each tenant (discovery.Result).
	tenants map[string]map[string][]string
}

// MaxTeamRuleMetrics is how many metrics one team's rule (a MetricRule)
// may serve: every metric is listed in the API's discovery, which every
// namespace shares. The ones past it are dropped, and its status says how
// many.
const MaxTeamRuleMetrics = 100

// Add serves k from e in the namespace of e's rule (every namespace for a
// rule of the file), unless an earlier rule serves it there: rules are
// built in order (the file's, then each namespace's), so the first wins, as
// the config documents. A definition lost to another rule is recorded as an
// Overlap. A rule of the file wins over every team's rule (see update).
func (x *Index[K, E]) Add(k K, e Entry[E]) {
	sk := scoped[K]{k, e.Rule.Namespace()}
	prev, dup := x.entries[sk]
	if !dup {
		if sk.ns != "" {
			if x.teamMetrics[e.Rule] >= MaxTeamRuleMetrics {
				x.dropped[e.Rule]++
				return
			}
			x.teamMetrics[e.Rule]++
		}
		x.entries[sk] = e
		return
	}
	x.overlap(k, prev, e)
}

// Dropped is how many metrics each team's rule would serve past
// MaxTeamRuleMetrics.
func (x *Index[K, E]) Dropped() map[*rules.Rule]int { return maps.Clone(x.dropped) }

// overlap records that kept serves k and ignored does not.
func (x *Index[K, E]) overlap(k K, kept, ignored Entry[E]) {
	if kept.Rule != ignored.Rule {
		d := x.describe(k, kept)
		ov := Overlap{Metric: d.Metric, Resource: d.Resource, Kept: kept.Source, Ignored: ignored.Source}
		if !slices.Contains(x.overlaps, ov) {
			x.overlaps = append(x.overlaps, ov)
		}
	}
	if kept.Source != ignored.Source {
		klog.V(2).InfoS("Metric defined twice; keeping the first definition", "metric", x.describe(k, kept).Metric,
			"kept", kept.String(), "ignored", ignored.String())
	}
}

// Refuse records that a rule of the file left out (why) would have served
// k: a request for k, when no other rule serves it, is answered 404 with
// why. (A team's rule that cannot be served is refused whole, in its
// status.)
func (x *Index[K, E]) Refuse(k K, why error) {
	if _, done := x.refused[k]; !done {
		x.refused[k] = why
	}
}

// Get returns the entry serving k in namespace ns: a rule of the file's,
// else one of ns's own team rules'. ns is "" for what is in no namespace.
func (x *Index[K, E]) Get(k K, ns string) (Entry[E], bool) {
	if e, ok := x.entries[scoped[K]{k, ""}]; ok || ns == "" {
		return e, ok
	}
	e, ok := x.entries[scoped[K]{k, ns}]
	return e, ok
}

// Has reports whether k is served in some namespace, or a rule left out
// would serve it (and answers why).
func (x *Index[K, E]) Has(k K) bool {
	_, refused := x.refused[k]
	return refused || len(x.scopes[k]) > 0
}

// ServesIn reports whether a request for k in namespace ns ("" for what is
// in no namespace) is this adapter's to answer: a rule of the file serves
// k (in every namespace), or one of ns's own team rules does, or a rule of
// the file left out would (it answers why). A team's rule in another
// namespace does not make k this adapter's in ns.
func (x *Index[K, E]) ServesIn(k K, ns string) bool {
	if _, ok := x.Get(k, ns); ok {
		return true
	}
	_, refused := x.refused[k]
	return refused
}

// Len is the number of served metrics, one per namespace a team's rule
// serves it in.
func (x *Index[K, E]) Len() int { return len(x.entries) }

// All yields each served metric once, in the Catalog's order: the entry of
// the file's rule, else of the first namespace's (discovery lists names,
// not namespaces).
func (x *Index[K, E]) All() iter.Seq2[K, Entry[E]] {
	return func(yield func(K, Entry[E]) bool) {
		for _, k := range x.sorted {
			if !yield(k, x.entries[scoped[K]{k, x.scopes[k][0]}]) {
				return
			}
		}
	}
}

// Overlaps are the definitions other rules won over, sorted.
func (x *Index[K, E]) Overlaps() []Overlap { return slices.Clone(x.overlaps) }

// Pending says which rules of the file were never listed, and why; nil
// when every rule's series were.
func (x *Index[K, E]) Pending() error { return x.pending }

// Served describes every served metric, in every namespace: the file's
// rules' first, by their order in the file, then each namespace's; then by
// metric and resource.
func (x *Index[K, E]) Served() []Served {
	out := make([]Served, 0, len(x.entries))
	for _, k := range x.sorted {
		for _, ns := range x.scopes[k] {
			out = append(out, x.describe(k, x.entries[scoped[K]{k, ns}]))
		}
	}
	slices.SortStableFunc(out, func(a, b Served) int {
		return cmp.Or(strings.Compare(a.Rule.Namespace(), b.Rule.Namespace()), cmp.Compare(a.Rule.Index, b.Rule.Index),
			strings.Compare(a.Metric, b.Metric), strings.Compare(a.Resource, b.Resource))
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
	// TenantOf is the tenant of namespace ns on the store named backend
	// (backends.Tenants.Of; has is false for a store without tenants). A
	// rule of the file on a store with tenants serves a metric in the
	// namespaces whose tenant has its series. Nil: no store has tenants.
	TenantOf func(ctx context.Context, backend, ns string) (tenant string, has bool, err error)
}

// Catalog holds the rules of one API and the Index of their last
// discovery round.
type Catalog[K comparable, E any] struct {
	cfg Config[K, E]
	// mu guards rules and serialises builds.
	mu    sync.Mutex
	rules []*rules.Rule
	index atomic.Pointer[Index[K, E]]
	// shadowed holds the upstream names logged as served here.
	shadowed sync.Map
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

// Dropped is how many metrics each team's rule would serve past
// MaxTeamRuleMetrics in the last discovery round; nil before the first.
func (c *Catalog[K, E]) Dropped() map[*rules.Rule]int {
	idx := c.index.Load()
	if idx == nil {
		return nil
	}
	return idx.Dropped()
}

// Upstream's returns what an upstream lists (package upstream's
// discovery of the API's group) that this adapter does not: the resources
// whose key (key reads it from a resource's name; false leaves it out) no
// rule serves in any namespace. A name both serve is this adapter's in
// discovery, and logged once.
func (c *Catalog[K, E]) Upstreams(resources []metav1.APIResource, key func(name string) (K, bool)) []metav1.APIResource {
	idx := c.index.Load()
	var out []metav1.APIResource
	for _, r := range resources {
		k, ok := key(r.Name)
		if !ok {
			continue
		}
		if idx != nil && idx.Has(k) {
			if _, logged := c.shadowed.LoadOrStore(r.Name, true); !logged {
				klog.InfoS("A metric both this adapter and an upstream serve is served here", "api", c.cfg.API, "metric", r.Name)
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// Index returns the last discovery round's Index, or nil before the first.
func (c *Catalog[K, E]) Index() *Index[K, E] { return c.index.Load() }

// update builds and swaps in the Index; call it with c.mu held.
func (c *Catalog[K, E]) update(r discovery.Result) {
	idx := &Index[K, E]{entries: map[scoped[K]]Entry[E]{}, scopes: map[K][]string{}, refused: map[K]error{},
		pendingIn: map[string]error{}, built: r.Time, describe: c.cfg.Describe,
		teamMetrics: map[*rules.Rule]int{}, dropped: map[*rules.Rule]int{}, tenants: r.Tenants}
	c.cfg.Build(c.rules, r, idx)
	// A rule of the file serves its metrics in every namespace: a team's
	// rule naming one of them is overruled, and told so (an Overlap).
	for sk, e := range idx.entries {
		if file, ok := idx.entries[scoped[K]{sk.key, ""}]; ok && sk.ns != "" {
			idx.overlap(sk.key, file, e)
			delete(idx.entries, sk)
		}
	}
	for sk := range idx.entries {
		idx.scopes[sk.key] = append(idx.scopes[sk.key], sk.ns)
		delete(idx.refused, sk.key) // another rule serves it
	}
	for _, nss := range idx.scopes {
		slices.Sort(nss)
	}
	var file []*rules.Rule
	team := map[string][]*rules.Rule{}
	for _, rule := range c.rules {
		if ns := rule.Namespace(); ns != "" {
			team[ns] = append(team[ns], rule)
		} else {
			file = append(file, rule)
		}
	}
	idx.pending = r.Pending(file)
	for ns, rs := range team {
		if err := r.Pending(rs); err != nil {
			idx.pendingIn[ns] = err
		}
	}
	idx.sorted = slices.SortedFunc(maps.Keys(idx.scopes), c.cfg.Compare)
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
	found := make([]metrics.RuleDiscovery, 0, len(c.rules))
	for _, rule := range c.rules {
		found = append(found, metrics.RuleDiscovery{Rule: rule.String(), Backend: rule.Backend(), Listed: r.Listed[rule.Listing()], Metrics: perRule[rule]})
	}
	metrics.SetDiscovered(c.cfg.API, found)
}

// ErrNotDiscovered is the 503 before the first discovery round.
var ErrNotDiscovered = apierrors.NewServiceUnavailable("metric discovery has not completed yet")

// Lookup finds the entry serving k for a request in namespace ns ("" for
// what is in no namespace), checks that it serves the request (check, if
// not nil: the entry's scope against the request's), and only then records
// it in the request's explain trace.
// Its errors are StatusErrors: 503 before the first discovery round, and
// for a metric no rule serves while some rules that could serve it in ns
// were never listed (it may be theirs); otherwise the API's 404, which says
// why when a rule left out of the file would have served k, and says
// nothing of other namespaces' rules.
func (c *Catalog[K, E]) Lookup(ctx context.Context, k K, ns string, check func(Entry[E]) error) (Entry[E], error) {
	idx := c.index.Load()
	if idx == nil {
		return Entry[E]{}, ErrNotDiscovered
	}
	if e, ok := idx.Get(k, ns); ok {
		if check != nil {
			if err := check(e); err != nil {
				return Entry[E]{}, err // nothing of e is traced
			}
		}
		if err := c.inTenant(ctx, idx, k, e, ns); err != nil {
			return Entry[E]{}, err
		}
		trace.From(ctx).Rule(e.Rule.String(), e.Series)
		return e, nil
	}
	if pending := cmp.Or(idx.pending, idx.pendingIn[ns]); pending != nil {
		// A rule not listed yet may serve it.
		return Entry[E]{}, apierrors.NewServiceUnavailable(fmt.Sprintf(
			"%s is not known, and some %s could not list their series yet: %v", c.cfg.Name(k), c.cfg.Section, pending))
	}
	if why, ok := idx.refused[k]; ok {
		return Entry[E]{}, c.cfg.NotFound(k, "the rule that would serve it is left out: "+why.Error())
	}
	// Whether another namespace's rule objects serve k is theirs to know:
	// the answer is the one for a metric nobody serves.
	return Entry[E]{}, c.cfg.NotFound(k, "")
}

// inTenant checks that e, a rule of the file on a store with a tenant per
// namespace, has its series in the tenant of namespace ns: a metric that
// exists in one tenant is served in its namespaces only, and elsewhere is
// the 404 of a metric nobody serves. A namespace without a tenant is
// refused (backends.Tenants.Of says why). Requests in no namespace are
// checked by their query, one per tenant of their objects.
func (c *Catalog[K, E]) inTenant(ctx context.Context, idx *Index[K, E], k K, e Entry[E], ns string) error {
	byTenant, ok := idx.tenants[e.Rule.Listing()]
	if !ok || ns == "" || e.Rule.Namespace() != "" || c.cfg.TenantOf == nil {
		return nil
	}
	tenant, has, err := c.cfg.TenantOf(ctx, e.Rule.Backend(), ns)
	switch {
	case err != nil:
		return err
	case !has:
		return nil
	}
	names, listed := byTenant[tenant]
	if !listed {
		return apierrors.NewServiceUnavailable(fmt.Sprintf("%s: tenant %s of namespace %s was not in the last round of series listings on backend %s "+
			"(a tenant new since then, or one past the backend's tenant.maxTenants)", c.cfg.Name(k), tenant, ns, e.Rule.Backend()))
	}
	if _, found := slices.BinarySearch(names, e.Series); !found {
		return c.cfg.NotFound(k, "")
	}
	return nil
}

// Serves reports whether a request for k in namespace ns is this
// adapter's to answer (Index.ServesIn), as the last discovery round says;
// false before the first. What it does not serve, an upstream may.
func (c *Catalog[K, E]) Serves(k K, ns string) bool {
	idx := c.index.Load()
	return idx != nil && idx.ServesIn(k, ns)
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
