// Package discovery lists, in the background, the Prometheus series that
// the rules' seriesQuery selectors match, and hands each listing to the
// providers that build their metric lists from it (custom and external
// metrics). Each distinct seriesQuery is listed once per round, however many
// rules share it.
//
// The listings of a round run side by side (at most MaxConcurrentListings
// at once), each bounded by the round's deadline (--discovery-timeout), so
// one slow seriesQuery cannot starve the others. A listing that fails for
// one query keeps that query's last good series and reports the failure;
// the others are used as listed. Until every query has
// been listed once, failed rounds are retried sooner, backing off from one
// second up to the relist interval.
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
	// Time is when the round started.
	Time time.Time
}

// Pending says, for each rule whose seriesQuery has never been listed, why
// (the listing's error in this round, or that it was not listed yet); nil
// when every rule's series were listed.
func (r Result) Pending(rs []*rules.Rule) error {
	var pending []error
	for _, rule := range rs {
		if _, listed := r.Series[rule.SeriesQuery()]; listed {
			continue
		}
		err := r.Failed[rule.SeriesQuery()]
		if err == nil {
			err = errors.New("not listed yet")
		}
		pending = append(pending, fmt.Errorf("%s: %w", rule, err))
	}
	return errors.Join(pending...)
}

// Config configures a Discoverer.
type Config struct {
	// Queries are the seriesQuery selectors to list; duplicates are listed
	// once.
	Queries []string
	Lister  SeriesLister
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
	queries  []string
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
		lister:     cfg.Lister,
		interval:   cfg.Interval,
		maxAge:     cfg.MaxAge,
		timeout:    cfg.Timeout,
		parallel:   cfg.MaxConcurrentListings,
		clock:      cfg.Clock,
		last:       map[string][]model.LabelSet{},
		lastListed: map[string]time.Time{},
	}
	d.queries = dedup(cfg.Queries)
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
func (d *Discoverer) Reconfigure(ctx context.Context, queries []string, apply func(Result)) Result {
	d.round.Lock()
	defer d.round.Unlock()
	queries = dedup(queries)
	d.mu.Lock()
	d.queries = queries
	for q := range d.last {
		if !slices.Contains(queries, q) {
			delete(d.last, q)
			delete(d.lastListed, q)
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
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()

	d.mu.Lock()
	queries := slices.Clone(d.queries)
	d.mu.Unlock()

	failed, listed := d.listEach(ctx, queries, now)
	metrics.ObserveDiscovery(d.clock.Since(now))

	d.mu.Lock()
	for q, sets := range listed {
		d.last[q] = sets
		d.lastListed[q] = now
	}
	series := make(map[string][]model.LabelSet, len(d.last))
	for q, sets := range d.last {
		series[q] = sets
	}
	d.lastFailed = failed
	d.rounds++
	if len(d.missingLocked()) == 0 {
		d.ready = true
	}
	r := Result{Series: series, Failed: failed, Listed: maps.Clone(d.lastListed), Time: now}
	d.mu.Unlock()

	if len(failed) > 0 {
		klog.ErrorS(errorOf(failed), "Failed to list some series; their rules keep the metrics of their last listing",
			"failed", len(failed), "queries", len(queries))
	}
	return r
}

// listEach lists every query, side by side, and returns the failures and
// the listings.
func (d *Discoverer) listEach(ctx context.Context, queries []string, now time.Time) (map[string]error, map[string][]model.LabelSet) {
	failed := map[string]error{}
	listed := map[string][]model.LabelSet{}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(d.parallel)
	for _, q := range queries {
		g.Go(func() error {
			sets, err := d.lister.Series(ctx, []string{q}, now.Add(-d.maxAge), now)
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

func dedup(queries []string) []string {
	var out []string
	for _, q := range queries {
		if !slices.Contains(out, q) {
			out = append(out, q)
		}
	}
	return out
}

// Listed reports whether every query has been listed successfully at least
// once.
func (d *Discoverer) Listed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.last) == len(d.queries)
}

// Ready reports whether discovery has what the providers need to answer:
// a round has run, and every query has been listed at least once, unless
// Prometheus rejects it (a broken rule, logged and reported per rule, must
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
	for _, q := range d.queries {
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

// Err returns the failures of the last round, naming each query, or nil.
func (d *Discoverer) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rounds == 0 {
		return errors.New("series discovery has not run yet")
	}
	return errorOf(d.lastFailed)
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
