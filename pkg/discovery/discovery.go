// Package discovery lists, in the background, the Prometheus series that
// the rules' seriesQuery selectors match, and hands each listing to the
// providers that build their metric lists from it (custom and external
// metrics). A Discoverer lists the Queries (the file's and the teams')
// through a SeriesLister (package promclient) in rounds, and hands each
// round's Result to its subscribers. Each distinct seriesQuery is listed
// once per round, however many rules share it.
//
// The listings of a round run side by side (at most MaxConcurrentListings
// at once), each bounded by the round's deadline (--discovery-timeout), so
// one slow seriesQuery cannot starve the others. A listing that fails for
// one query keeps that query's last good series and reports the failure;
// the others are used as listed. Until every query has
// been listed once, failed rounds are retried sooner, backing off from one
// second up to the relist interval.
//
// The seriesQuery selectors of rule objects (a team's MetricRules) are
// listed apart, in the same round, one listing per namespace for all of its
// selectors: with slots and a deadline of their own (TeamLimits), at most
// TeamLimits.MaxSeries series per namespace (a listing with more fails),
// and without a say in readiness. A team's slow or huge listing costs its
// own rules only.
//
// Whatever a listing returns, a series whose name is not a valid
// Prometheus metric name (Prometheus 3 accepts any UTF-8) is dropped and
// counted: a series name is pasted into a rule's PromQL as .Series, so it
// must never be able to change the query's shape.
//
// It knows nothing of Kubernetes or of how series become metrics.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"golang.org/x/sync/errgroup"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// SeriesLister lists series; promclient.Client implements it.
type SeriesLister interface {
	// Series returns the label sets of the series matching any of matches
	// that had samples between start and end. It returns when ctx is done.
	Series(ctx context.Context, matches []string, start, end time.Time) ([]model.LabelSet, error)
}

// Result is the state after one round of listings.
type Result struct {
	// Series holds, for each seriesQuery listed successfully at least once,
	// the series of its last successful listing.
	Series map[string][]model.LabelSet
	// Failed holds the queries whose listing failed in this round.
	Failed map[string]error
	// Listed holds, for each query in Series, when its last successful
	// listing started.
	Listed map[string]time.Time
	// Tenants holds, for each query of the rules file on a store with a
	// tenant per namespace, the names of the series each tenant's last
	// listing found, sorted (Series holds them all): a metric is served
	// in the namespaces of the tenants that have it.
	Tenants map[string]map[string][]string
	// Time is when the round started.
	Time time.Time
}

// Pending says, for each rule whose seriesQuery has never been listed, why
// (the listing's error in this round, or that it was not listed yet); nil
// when every rule's series were listed.
func (r Result) Pending(rs []*rules.Rule) error {
	var pending []error
	for _, rule := range rs {
		if _, listed := r.Series[rule.Listing()]; listed {
			continue
		}
		err := r.Failed[rule.Listing()]
		if err == nil {
			err = errors.New("not listed yet")
		}
		pending = append(pending, fmt.Errorf("%s: %w", rule, err))
	}
	return errors.Join(pending...)
}

// Queries are the seriesQuery selectors a round lists: the rules file's,
// and the rule objects' (teams'), by namespace: a namespace's selectors are
// listed together, in one listing, within TeamLimits. A selector in both is
// the file's. Duplicates are listed once.
type Queries struct {
	File []string
	Team map[string][]string
}

// QueriesOf are the distinct seriesQuery selectors of rules, in order:
// those of the rules file's rules, and those of team rules by namespace.
func QueriesOf(rs []*rules.Rule) Queries {
	q := Queries{Team: map[string][]string{}}
	for _, r := range rs {
		if ns := r.Namespace(); ns == "" {
			q.File = append(q.File, r.Listing())
		} else {
			q.Team[ns] = append(q.Team[ns], r.Listing())
		}
	}
	return q.dedup()
}

// dedup drops duplicates, team selectors that are the file's too, and
// namespaces left with none.
func (q Queries) dedup() Queries {
	out := Queries{File: dedup(q.File), Team: map[string][]string{}}
	for ns, sels := range q.Team {
		var kept []string
		for _, sel := range dedup(sels) {
			if !slices.Contains(out.File, sel) {
				kept = append(kept, sel)
			}
		}
		if len(kept) > 0 {
			out.Team[ns] = kept
		}
	}
	return out
}

// team is every team selector, by namespace in order.
func (q Queries) team() []string {
	var out []string
	for _, ns := range slices.Sorted(maps.Keys(q.Team)) {
		out = append(out, q.Team[ns]...)
	}
	return out
}

func (q Queries) all() []string { return append(slices.Clip(q.File), q.team()...) }

// TeamLimits bound the listings of rule objects' selectors.
type TeamLimits struct {
	// MaxConcurrent bounds how many of them run at once;
	// DefaultConcurrentListings when not positive.
	MaxConcurrent int
	// Timeout bounds each of them; Config.Timeout when not positive.
	Timeout time.Duration
	// MaxSeries is how many series one namespace's listing may return
	// (0: no bound): a listing with more fails, for each of its selectors.
	MaxSeries int
}

// Config configures a Discoverer.
type Config struct {
	// Queries are the rules file's seriesQuery selectors to list;
	// duplicates are listed once.
	Queries []string
	// TeamQueries are the rule objects' selectors by namespace, listed
	// within Team.
	TeamQueries map[string][]string
	Team        TeamLimits
	// Lister lists the series of the default store.
	Lister SeriesLister
	// Backends returns the lister of a named store (rules.ListingOf);
	// nil when no rule names one.
	Backends func(name string) SeriesLister
	// Tenants lists the tenants of a store with a tenant per namespace
	// (backends.Tenants.All; has is false for a store without), at most
	// its bound: the rules file's selectors on such a store are listed
	// once per tenant per round, together, as that tenant. TenantOf is
	// the tenant of one namespace (backends.Tenants.Of), as which its
	// MetricRules' selectors are listed. Nil: no store has tenants.
	Tenants  func(ctx context.Context, backend string) (tenants []string, has bool, err error)
	TenantOf func(ctx context.Context, backend, ns string) (tenant string, has bool, err error)
	// Interval is how often the series are listed again.
	Interval time.Duration
	// MaxAge is how far back a listing looks for series; at least Interval.
	MaxAge time.Duration
	// Timeout bounds one round of listings, and so each listing. Series
	// listings on large Prometheus servers are slow: it should be longer
	// than a query's.
	Timeout time.Duration
	// MaxConcurrentListings bounds the listings of a round that run at
	// once; DefaultConcurrentListings when not positive.
	MaxConcurrentListings int
	// Clock defaults to the real clock.
	Clock clock.Clock
}

// Discoverer lists series in rounds and passes each round's Result to its
// subscribers.
type Discoverer struct {
	backends func(name string) SeriesLister
	tenants  func(ctx context.Context, backend string) ([]string, bool, error)
	tenantOf func(ctx context.Context, backend, ns string) (string, bool, error)
	queries  Queries
	team     TeamLimits
	lister   SeriesLister
	interval time.Duration
	maxAge   time.Duration
	timeout  time.Duration
	parallel int
	clock    clock.Clock

	// round serialises rounds: a reconfiguration waits for the round in
	// progress, so subscribers never see a round of the old queries after
	// the new ones were applied.
	round sync.Mutex

	mu          sync.Mutex
	subscribers []func(Result)
	last        map[string][]model.LabelSet
	lastListed  map[string]time.Time
	lastFailed  map[string]error
	// lastTenants is, for each query listed per tenant, the series names
	// of each tenant in its last successful listing.
	lastTenants map[string]map[string][]string
	rounds      int
	// ready is set once every query was listed: from then on, Ready
	// stays nil (later failures, and queries a reload adds, keep the
	// metrics already served and are reported by Err, the log and the
	// metrics, not by taking the adapter out of its Service).
	ready bool
}

// New returns a Discoverer; call Run to start it.
func New(cfg Config) *Discoverer {
	d := &Discoverer{
		lister:      cfg.Lister,
		interval:    cfg.Interval,
		maxAge:      cfg.MaxAge,
		timeout:     cfg.Timeout,
		parallel:    cfg.MaxConcurrentListings,
		clock:       cfg.Clock,
		last:        map[string][]model.LabelSet{},
		lastListed:  map[string]time.Time{},
		team:        cfg.Team,
		backends:    cfg.Backends,
		tenants:     cfg.Tenants,
		tenantOf:    cfg.TenantOf,
		lastTenants: map[string]map[string][]string{},
	}
	d.queries = Queries{File: cfg.Queries, Team: cfg.TeamQueries}.dedup()
	if d.interval <= 0 {
		d.interval = time.Minute
	}
	if d.maxAge < d.interval {
		d.maxAge = d.interval
	}
	if d.timeout <= 0 {
		d.timeout = 30 * time.Second
	}
	if d.clock == nil {
		d.clock = clock.RealClock{}
	}
	if d.parallel <= 0 {
		d.parallel = DefaultConcurrentListings
	}
	if d.team.MaxConcurrent <= 0 {
		d.team.MaxConcurrent = DefaultConcurrentListings
	}
	if d.team.Timeout <= 0 {
		d.team.Timeout = d.timeout
	}
	return d
}

// DefaultConcurrentListings is how many series listings a round runs at
// once unless configured: enough that a slow seriesQuery leaves the others
// their time, few enough not to load Prometheus with a burst.
const DefaultConcurrentListings = 4

// Subscribe registers fn to receive every round's Result, in the goroutine
// that runs the listings. Call it before Run.
func (d *Discoverer) Subscribe(fn func(Result)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.subscribers = append(d.subscribers, fn)
}

// Run lists the series until ctx is done.
func (d *Discoverer) Run(ctx context.Context) {
	wait.BackoffUntilWithContext(ctx, func(ctx context.Context) { d.Relist(ctx) }, &schedule{d: d}, true)
}

// Relist runs one round of listings now and hands the Result to the
// subscribers.
func (d *Discoverer) Relist(ctx context.Context) Result {
	d.round.Lock()
	defer d.round.Unlock()
	r := d.list(ctx)
	d.mu.Lock()
	subscribers := slices.Clone(d.subscribers)
	d.mu.Unlock()
	for _, fn := range subscribers {
		fn(r)
	}
	return r
}

// Reconfigure replaces the queries, lists them at once, and hands that
// round's Result to apply instead of the subscribers: apply switches the
// providers to the rules the queries come from. Series of queries that
// stay keep their last listing if this one fails. Rounds after this one
// list the new queries and go to the subscribers as before.
func (d *Discoverer) Reconfigure(ctx context.Context, queries Queries, apply func(Result)) Result {
	d.round.Lock()
	defer d.round.Unlock()
	queries = queries.dedup()
	all := queries.all()
	d.mu.Lock()
	d.queries = queries
	for q := range d.last {
		if !slices.Contains(all, q) {
			delete(d.last, q)
			delete(d.lastListed, q)
			delete(d.lastTenants, q)
		}
	}
	d.mu.Unlock()
	r := d.list(ctx)
	apply(r)
	return r
}

// list runs one round of listings and records it. Call it with d.round
// held.
func (d *Discoverer) list(ctx context.Context) Result {
	now := d.clock.Now()
	d.mu.Lock()
	queries := d.queries
	d.mu.Unlock()

	// The file's selectors and the teams' side by side, each set within
	// its own slots and deadline.
	failed, listed := map[string]error{}, map[string][]model.LabelSet{}
	var tenantNames map[string]map[string][]string
	var mu sync.Mutex
	var wg sync.WaitGroup
	keep := func(f map[string]error, l map[string][]model.LabelSet) {
		mu.Lock()
		defer mu.Unlock()
		maps.Copy(failed, f)
		maps.Copy(listed, l)
	}
	wg.Go(func() {
		fctx, cancel := context.WithTimeout(ctx, d.timeout)
		defer cancel()
		plain, byTenant := d.tenantQueries(fctx, queries.File)
		var f map[string]error
		var l map[string][]model.LabelSet
		f, l, tenantNames = d.listTenants(fctx, byTenant, now)
		keep(f, l)
		keep(d.listEach(fctx, plain, d.parallel, 0, now))
	})
	wg.Go(func() {
		tctx, cancel := context.WithTimeout(ctx, d.team.Timeout)
		defer cancel()
		keep(d.listNamespaces(tctx, queries.Team, now))
	})
	wg.Wait()
	metrics.ObserveDiscovery(d.clock.Since(now))

	d.mu.Lock()
	for q, sets := range listed {
		d.last[q] = sets
		d.lastListed[q] = now
	}
	maps.Copy(d.lastTenants, tenantNames)
	series := make(map[string][]model.LabelSet, len(d.last))
	for q, sets := range d.last {
		series[q] = sets
	}
	d.lastFailed = failed
	d.rounds++
	if len(d.missingLocked()) == 0 {
		d.ready = true
	}
	r := Result{Series: series, Failed: failed, Listed: maps.Clone(d.lastListed), Tenants: maps.Clone(d.lastTenants), Time: now}
	d.mu.Unlock()

	if fileFailed := only(failed, queries.File); len(fileFailed) > 0 {
		klog.ErrorS(errorOf(fileFailed), "Failed to list some series; their rules keep the metrics of their last listing",
			"failed", len(fileFailed), "queries", len(queries.File))
	}
	if teamFailed := only(failed, queries.team()); len(teamFailed) > 0 {
		// Each rule object's status says why; a team's rule must not
		// fill the log.
		klog.V(2).InfoS("Failed to list the series of some MetricRules; their status says why", "failed", len(teamFailed), "queries", len(queries.team()))
	}
	return r
}

// only is the entries of m whose key is in keys.
func only[V any](m map[string]V, keys []string) map[string]V {
	out := map[string]V{}
	for _, k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}

// listEach lists every query, side by side, at most parallel at once,
// each returning at most limit series (0: no bound), and returns the
// failures and the listings.
func (d *Discoverer) listEach(ctx context.Context, queries []string, parallel, limit int, now time.Time) (map[string]error, map[string][]model.LabelSet) {
	failed := map[string]error{}
	listed := map[string][]model.LabelSet{}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(parallel)
	if limit > 0 {
		ctx = promclient.WithSeriesLimit(ctx, limit)
	}
	for _, q := range queries {
		g.Go(func() error {
			sets, err := d.series(ctx, []string{q}, now)
			if err == nil && limit > 0 && len(sets) > limit {
				metrics.ObserveSeriesDropped("over_limit", len(sets))
				sets, err = nil, fmt.Errorf("%w: it lists more than %d series, the most a MetricRule's listing may (--metric-rules-max-series): narrow spec.seriesQuery", ErrTooManySeries, limit)
			}
			if err == nil {
				sets = validNames(sets)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[q] = err
			} else {
				listed[q] = sets
			}
			return nil // one query's failure is its own
		})
	}
	_ = g.Wait()
	return failed, listed
}

// listNamespaces lists each namespace's team selectors together, in one
// listing (at most d.team.MaxConcurrent namespaces at once), of at most
// d.team.MaxSeries series, and gives each selector the series it matches.
// A namespace whose listing fails otherwise than by its size has its
// selectors listed one by one, so that one that Prometheus refuses fails
// alone.
func (d *Discoverer) listNamespaces(ctx context.Context, groups map[string][]string, now time.Time) (map[string]error, map[string][]model.LabelSet) {
	failed := map[string]error{}
	listed := map[string][]model.LabelSet{}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(d.team.MaxConcurrent)
	limit := d.team.MaxSeries
	lctx := ctx
	if limit > 0 {
		lctx = promclient.WithSeriesLimit(ctx, limit)
	}
	for _, ns := range slices.Sorted(maps.Keys(groups)) {
		// One listing per store the namespace's rules read.
		byBackend := map[string][]string{}
		for _, key := range groups[ns] {
			backend, _ := rules.SplitListing(key)
			byBackend[backend] = append(byBackend[backend], key)
		}
		for _, backend := range slices.Sorted(maps.Keys(byBackend)) {
			g.Go(func() error {
				f, l := d.listTogether(ctx, lctx, ns, byBackend[backend], limit, now)
				mu.Lock()
				defer mu.Unlock()
				maps.Copy(failed, f)
				maps.Copy(listed, l)
				return nil
			})
		}
	}
	_ = g.Wait()
	return failed, listed
}

// listTogether lists the selectors of one namespace on one store in one
// listing (lctx carries its bound), as the namespace's tenant on a store
// with tenants, and gives each the series it matches.
func (d *Discoverer) listTogether(ctx, lctx context.Context, ns string, sels []string, limit int, now time.Time) (map[string]error, map[string][]model.LabelSet) {
	if d.tenantOf != nil {
		backend, _ := rules.SplitListing(sels[0])
		tenant, has, err := d.tenantOf(ctx, backend, ns)
		if err != nil {
			failed := map[string]error{}
			for _, sel := range sels {
				failed[sel] = err
			}
			return failed, map[string][]model.LabelSet{}
		}
		if has {
			ctx, lctx = promclient.WithTenant(ctx, tenant), promclient.WithTenant(lctx, tenant)
		}
	}
	sets, err := d.series(lctx, sels, now)
	switch {
	case err == nil && limit > 0 && len(sets) > limit:
		metrics.ObserveSeriesDropped("over_limit", len(sets))
		err = fmt.Errorf("%w: the listing of namespace %s's MetricRules finds more than %d series, the most one namespace's may (--metric-rules-max-series): narrow spec.seriesQuery",
			ErrTooManySeries, ns, limit)
	case err != nil && len(sels) > 1 && ctx.Err() == nil:
		// One selector may make the listing fail: each alone.
		return d.listEach(ctx, sels, 1, limit, now)
	case err == nil:
		return attribute(validNames(sets), sels)
	}
	failed := map[string]error{}
	for _, sel := range sels {
		failed[sel] = err
	}
	return failed, map[string][]model.LabelSet{}
}

// tenantQueries splits the rules file's queries into those on stores
// without tenants (plain) and those on stores with a tenant per
// namespace, by store and tenant: each tenant's are listed together.
func (d *Discoverer) tenantQueries(ctx context.Context, queries []string) (plain []string, byTenant []tenantListing) {
	if d.tenants == nil {
		return queries, nil
	}
	onStore := map[string][]string{}
	var stores []string
	for _, q := range queries {
		backend, _ := rules.SplitListing(q)
		if _, seen := onStore[backend]; !seen {
			stores = append(stores, backend)
		}
		onStore[backend] = append(onStore[backend], q)
	}
	for _, backend := range stores {
		tenants, has, err := d.tenants(ctx, backend)
		if !has {
			plain = append(plain, onStore[backend]...)
			continue
		}
		switch {
		case err != nil && len(tenants) == 0:
			byTenant = append(byTenant, tenantListing{backend: backend, queries: onStore[backend], err: err})
			continue
		case err != nil:
			// Past the store's bound: the first tenants are listed,
			// and the log says which bound.
			klog.ErrorS(err, "Listing the series of some tenants only", "backend", backend, "listed", len(tenants))
		}
		byTenant = append(byTenant, tenantListing{backend: backend, queries: onStore[backend], tenants: tenants})
	}
	return plain, byTenant
}

// tenantListing is the rules file's queries on one store with tenants,
// and its tenants (or why they are not known).
type tenantListing struct {
	backend string
	queries []string
	tenants []string
	err     error
}

// listTenants lists, for each store with tenants, each tenant's queries
// together, as that tenant (at most d.parallel listings at once): each
// query gets the series of every tenant, and the names of each tenant's.
// A query whose listing fails for one tenant fails, and keeps its last
// listing.
func (d *Discoverer) listTenants(ctx context.Context, listings []tenantListing, now time.Time) (map[string]error, map[string][]model.LabelSet, map[string]map[string][]string) {
	failed := map[string]error{}
	listed := map[string][]model.LabelSet{}
	names := map[string]map[string][]string{}
	if len(listings) == 0 {
		return failed, listed, names
	}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(d.parallel)
	for _, l := range listings {
		if l.err != nil {
			for _, q := range l.queries {
				failed[q] = l.err
			}
			continue
		}
		for _, q := range l.queries {
			listed[q], names[q] = []model.LabelSet{}, map[string][]string{}
		}
		for _, tenant := range l.tenants {
			g.Go(func() error {
				sets, err := d.series(promclient.WithTenant(ctx, tenant), l.queries, now)
				var f map[string]error
				var mine map[string][]model.LabelSet
				if err != nil {
					f = map[string]error{}
					for _, q := range l.queries {
						f[q] = fmt.Errorf("tenant %s: %w", tenant, err)
					}
				} else {
					f, mine = attribute(validNames(sets), l.queries)
				}
				mu.Lock()
				defer mu.Unlock()
				for q, err := range f {
					if _, dup := failed[q]; !dup {
						failed[q] = err
					}
				}
				for q, sets := range mine {
					listed[q] = append(listed[q], sets...)
					names[q][tenant] = seriesNames(sets)
				}
				return nil
			})
		}
	}
	_ = g.Wait()
	for q := range failed {
		delete(listed, q)
		delete(names, q)
	}
	for q, sets := range listed {
		listed[q] = dedupSets(sets)
	}
	return failed, listed, names
}

// seriesNames is the distinct names of sets, sorted.
func seriesNames(sets []model.LabelSet) []string {
	var out []string
	for _, ls := range sets {
		out = append(out, string(ls[model.MetricNameLabel]))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// dedupSets drops label sets listed twice (by two tenants).
func dedupSets(sets []model.LabelSet) []model.LabelSet {
	seen := make(map[model.Fingerprint]bool, len(sets))
	out := sets[:0]
	for _, ls := range sets {
		if fp := ls.Fingerprint(); !seen[fp] {
			seen[fp] = true
			out = append(out, ls)
		}
	}
	return out
}

// series lists the series of listing keys that are all on one store
// (rules.ListingOf), through that store's lister.
func (d *Discoverer) series(ctx context.Context, keys []string, now time.Time) ([]model.LabelSet, error) {
	backend, _ := rules.SplitListing(keys[0])
	lister := d.lister
	if backend != "" {
		if d.backends == nil {
			return nil, fmt.Errorf("no store is named %q", backend)
		}
		if lister = d.backends(backend); lister == nil {
			return nil, fmt.Errorf("no store is named %q", backend)
		}
	}
	sels := make([]string, len(keys))
	for i, k := range keys {
		_, sels[i] = rules.SplitListing(k)
	}
	return lister.Series(ctx, sels, now.Add(-d.maxAge), now)
}

// attribute gives each selector the series of a joint listing it
// matches.
func attribute(sets []model.LabelSet, sels []string) (map[string]error, map[string][]model.LabelSet) {
	failed := map[string]error{}
	listed := map[string][]model.LabelSet{}
	for _, sel := range sels {
		_, selector := rules.SplitListing(sel)
		matches, err := promql.SelectorMatches(selector)
		if err != nil {
			failed[sel] = err
			continue
		}
		mine := []model.LabelSet{}
		for _, ls := range sets {
			if matches(ls) {
				mine = append(mine, ls)
			}
		}
		listed[sel] = mine
	}
	return failed, listed
}

// ErrTooManySeries is a listing with more series than its bound.
var ErrTooManySeries = errors.New("too many series")

// validNames drops the series whose name is not a valid Prometheus metric
// name in the legacy (pre-UTF-8) syntax: a name is pasted into PromQL as
// .Series, where `)) or vector(1) #` would change the query.
func validNames(sets []model.LabelSet) []model.LabelSet {
	out := sets[:0:0]
	dropped := 0
	for _, ls := range sets {
		if name, ok := ls[model.MetricNameLabel]; ok && !model.LegacyValidation.IsValidMetricName(string(name)) {
			dropped++
			continue
		}
		out = append(out, ls)
	}
	if dropped == 0 {
		return sets
	}
	metrics.ObserveSeriesDropped("invalid_metric_name", dropped)
	return out
}

func dedup(queries []string) []string {
	var out []string
	for _, q := range queries {
		if !slices.Contains(out, q) {
			out = append(out, q)
		}
	}
	return out
}

// Listed reports whether every query of the rules file has been listed
// successfully at least once.
func (d *Discoverer) Listed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, q := range d.queries.File {
		if _, ok := d.last[q]; !ok {
			return false
		}
	}
	return true
}

// Ready reports whether discovery has what the providers need to answer:
// a round has run, and every query of the rules file has been listed at
// least once (a team's are not waited for), unless Prometheus rejects it (a broken rule, logged and reported per rule, must
// not keep the rest from being served). Otherwise it says what is missing.
// Once it has been nil it stays nil: a reload that adds a query, or a
// Prometheus outage, must not take every replica out of readiness at once
// while they serve what they have.
func (d *Discoverer) Ready() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ready {
		return nil
	}
	if d.rounds == 0 {
		return errors.New("series discovery has not run yet")
	}
	if missing := d.missingLocked(); len(missing) > 0 {
		return fmt.Errorf("series never listed: %w", errorOf(missing))
	}
	d.ready = true
	return nil
}

// missingLocked returns the queries never listed, and why, leaving out
// those Prometheus rejects. Call it with d.mu held.
func (d *Discoverer) missingLocked() map[string]error {
	missing := map[string]error{}
	for _, q := range d.queries.File {
		if _, listed := d.last[q]; listed {
			continue
		}
		err := d.lastFailed[q]
		if err != nil && promclient.Classify(err) == promclient.BadQuery {
			continue
		}
		if err == nil {
			err = errors.New("not listed yet")
		}
		missing[q] = err
	}
	return missing
}

// Err returns the failures of the last round's listings of the rules
// file's queries, naming each query, or nil. (A team's are in Result and
// its rule objects' status.)
func (d *Discoverer) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rounds == 0 {
		return errors.New("series discovery has not run yet")
	}
	return errorOf(only(d.lastFailed, d.queries.File))
}

func errorOf(failed map[string]error) error {
	if len(failed) == 0 {
		return nil
	}
	queries := make([]string, 0, len(failed))
	for q := range failed {
		queries = append(queries, q)
	}
	sort.Strings(queries)
	errs := make([]error, 0, len(queries))
	for _, q := range queries {
		errs = append(errs, fmt.Errorf("seriesQuery %s: %w", q, failed[q]))
	}
	return errors.Join(errs...)
}

// schedule is the wait.BackoffManager of the listing loop: the relist
// interval while every query has been listed, an exponential backoff from
// one second up to the interval while some never have or the last round
// failed.
type schedule struct {
	d       *Discoverer
	backoff *wait.Backoff
	timer   clock.Timer
}

func (s *schedule) Backoff() clock.Timer {
	delay := s.d.interval
	if !s.d.Listed() || s.d.Err() != nil {
		if s.backoff == nil {
			s.backoff = &wait.Backoff{Duration: time.Second, Factor: 2, Cap: s.d.interval, Steps: 64}
		}
		delay = min(s.backoff.Step(), s.d.interval)
	} else {
		s.backoff = nil
	}
	if s.timer == nil {
		s.timer = s.d.clock.NewTimer(delay)
	} else {
		s.timer.Reset(delay)
	}
	return s.timer
}
