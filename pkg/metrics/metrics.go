// Package metrics holds the adapter's own metrics: how its Prometheus
// queries went, per rule; what discovery found, per rule; whether the last
// rules reload worked; how many objects requests resolved; how big the
// informer caches are.
//
// They are registered on component-base's legacy registry, the one the
// generic API server serves at /metrics next to its own apiserver_*
// metrics (Register; RegisterOn a test's own Registry). Until then every
// recording function is a no-op, so unit tests of the packages that record
// need nothing. A CacheSizer reports the informer caches' sizes; a
// RuleDiscovery is what one round found for one rule.
//
// docs/operations.md lists every metric with its labels.
package metrics

import (
	"errors"
	"slices"
	"sync"
	"time"

	basemetrics "k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
)

// Namespace prefixes every metric of the adapter.
const Namespace = "custom_metrics_adapter"

// The APIs a query or a rule serves, as the "api" label says them.
const (
	CustomAPI   = "custom"
	ExternalAPI = "external"
	ResourceAPI = "resource"
)

// Outcomes of a query, as the "outcome" label says them.
const (
	OutcomeOK          = "ok"
	OutcomeNoData      = "no-data"
	OutcomeTimeout     = "timeout"
	OutcomeUnavailable = "unavailable"
	OutcomeBadQuery    = "bad-query"
	OutcomeCanceled    = "canceled"
	// OutcomeWarnings is an answer refused for its warnings (a backend's
	// onWarning: refuse).
	OutcomeWarnings = "warnings"
)

var outcomes = []string{OutcomeOK, OutcomeNoData, OutcomeTimeout, OutcomeUnavailable, OutcomeBadQuery, OutcomeCanceled}

var (
	queryDuration = basemetrics.NewHistogramVec(&basemetrics.HistogramOpts{
		Namespace: Namespace,
		Subsystem: "prometheus",
		Name:      "query_duration_seconds",
		Help: "Time taken by the Prometheus queries that answer API requests, by API, rule, the store the rule reads (backend: default for --prometheus-url) " +
			"and outcome (ok, no-data, timeout, unavailable, bad-query, canceled).",
		// 1 ms to about 33 s.
		Buckets:        basemetrics.ExponentialBuckets(0.001, 2, 16),
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"api", "rule", "backend", "outcome"})

	discoveryDuration = basemetrics.NewHistogram(&basemetrics.HistogramOpts{
		Namespace:      Namespace,
		Subsystem:      "discovery",
		Name:           "duration_seconds",
		Help:           "Time taken by one round of series listings (every distinct seriesQuery of the rules).",
		Buckets:        basemetrics.ExponentialBuckets(0.005, 2, 14),
		StabilityLevel: basemetrics.ALPHA,
	})

	discoveryLastSuccess = basemetrics.NewGaugeVec(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "discovery",
		Name:           "last_success_timestamp_seconds",
		Help:           "When each rule's series were last listed successfully, as a Unix time.",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"api", "rule"})

	discoveredMetrics = basemetrics.NewGaugeVec(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "discovery",
		Name:           "metrics",
		Help:           "Metrics each rule serves after the last discovery round (metric name and resource pairs for custom metrics, metric names for external ones).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"api", "rule"})

	reloadSuccessful = basemetrics.NewGauge(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "config",
		Name:           "last_reload_successful",
		Help:           "Whether the last attempt to reload the rules file succeeded (1) or kept the previous rules (0).",
		StabilityLevel: basemetrics.ALPHA,
	})

	reloadLastSuccess = basemetrics.NewGauge(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "config",
		Name:           "last_reload_success_timestamp_seconds",
		Help:           "When the rules now served were loaded, as a Unix time.",
		StabilityLevel: basemetrics.ALPHA,
	})

	reloads = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "config",
		Name:           "reloads_total",
		Help:           "Attempts to reload the rules file, by result (success, failure).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"result"})

	zeroed = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "prometheus",
		Name:           "empty_answers_as_zero_total",
		Help:           "Values answered 0 because Prometheus had no series for them and their rule sets emptyIsZero, by API and rule.",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"api", "rule"})

	forwarded = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "upstream",
		Name:           "requests_total",
		Help:           "Requests forwarded to an upstream (another metrics server of the same API group), by upstream, API and the status it answered (none: no answer).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"upstream", "api", "code"})

	forwardDuration = basemetrics.NewHistogramVec(&basemetrics.HistogramOpts{
		Namespace:      Namespace,
		Subsystem:      "upstream",
		Name:           "request_duration_seconds",
		Help:           "Time taken by the requests forwarded to each upstream.",
		Buckets:        basemetrics.ExponentialBuckets(0.001, 2, 16),
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"upstream"})

	upstreamDiscovered = basemetrics.NewGaugeVec(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "upstream",
		Name:           "discovery_last_success_timestamp_seconds",
		Help:           "When each upstream's discovery of an API group was last read successfully, as a Unix time.",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"upstream", "group"})

	rulesLeftOut = basemetrics.NewGaugeVec(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "config",
		Name:           "rule_left_out",
		Help:           "1 for each rule of the rules file that is left out because it cannot be served correctly (the log and check-config say why); every other rule serves.",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"rule"})

	resolvedObjects = basemetrics.NewHistogramVec(&basemetrics.HistogramOpts{
		Namespace:      Namespace,
		Subsystem:      "request",
		Name:           "resolved_objects",
		Help:           "Objects a request named or selected, resolved from the informer caches, by resource.",
		Buckets:        []float64{0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000},
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"resource"})

	teamQueriesLimited = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "metric_rules",
		Name:           "queries_limited_total",
		Help:           "Queries of a namespace's rule objects (MetricRules) stopped by a per-namespace limit, by namespace and limit (concurrency: refused with 429, --metric-rules-max-concurrent-queries; timeout: cut at --metric-rules-query-timeout).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"namespace", "limit"})

	teamRules = basemetrics.NewGaugeVec(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "metric_rules",
		Name:           "rules",
		Help:           "Rule objects (MetricRules) by state: accepted (served), invalid (does not compile or cannot be confined to its namespace), over_limit (beyond --metric-rules-per-namespace).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"state"})

	statusWriter = basemetrics.NewGauge(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "metric_rules",
		Name:           "status_writer",
		Help:           "1 on the replica that writes MetricRule status (the elected leader), 0 on the others.",
		StabilityLevel: basemetrics.ALPHA,
	})

	statusWrites = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "metric_rules",
		Name:           "status_writes_total",
		Help:           "MetricRule status writes by this replica, by result (ok, conflict, error; conflicts and errors are retried with backoff). Only the elected replica writes.",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"result"})

	seriesDropped = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "discovery",
		Name:           "series_dropped_total",
		Help:           "Series that discovery dropped, by reason: invalid_metric_name (not a valid Prometheus metric name in the legacy syntax, which would change a query's shape as .Series), over_limit (a MetricRule's listing with more than --metric-rules-max-series series: the listing fails).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"reason"})

	teamCompileTimeouts = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "metric_rules",
		Name:           "compile_timeouts_total",
		Help:           "Rule objects (MetricRules) refused because compiling them took longer than the deadline (one second), by namespace.",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"namespace"})

	tenantQueries = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "prometheus",
		Name:           "tenant_queries_total",
		Help:           "Queries sent as the tenant of the request's namespace to a backend with a tenant per namespace, by backend, tenant and outcome (as query_duration_seconds).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"backend", "tenant", "outcome"})

	sharedAnswers = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "shared_query",
		Name:           "answers_total",
		Help:           "Answers served from a query shared by the requests about one rule, namespace and metric selector (--shared-query-max-age), by rule and source (answer: its last answer; query: it had to run first).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"rule", "source"})

	sharedAge = basemetrics.NewHistogramVec(&basemetrics.HistogramOpts{
		Namespace:      Namespace,
		Subsystem:      "shared_query",
		Name:           "answer_age_seconds",
		Help:           "Age of the shared answers served (since their query was sent), by rule.",
		Buckets:        []float64{0.5, 1, 2.5, 5, 7.5, 10, 15, 20, 30, 45, 60},
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"rule"})

	sharedRefreshes = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "shared_query",
		Name:           "runs_total",
		Help:           "Runs of shared queries (in the background, or for requests they did not cover), by rule and result.",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"rule", "result"})

	sharedQueries = basemetrics.NewGauge(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "shared_query",
		Name:           "queries",
		Help:           "Shared queries kept (one per rule, namespace and metric selector asked for recently).",
		StabilityLevel: basemetrics.ALPHA,
	})

	answerAnnotations = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "prometheus",
		Name:           "answer_annotations_total",
		Help:           "Answers that carried warnings, a partial flag or infos, by backend, kind (warning, partial, info) and outcome (served, refused: a backend's onWarning refuses answers with warnings or flagged partial).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"backend", "kind", "outcome"})

	tenantRefused = basemetrics.NewCounterVec(&basemetrics.CounterOpts{
		Namespace:      Namespace,
		Subsystem:      "prometheus",
		Name:           "tenant_refused_total",
		Help:           "Requests refused, before anything was sent, because their namespace has no tenant (or an invalid one) on a backend with a tenant per namespace, by backend.",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"backend"})

	discoveryTenants = basemetrics.NewGaugeVec(&basemetrics.GaugeOpts{
		Namespace:      Namespace,
		Subsystem:      "discovery",
		Name:           "tenants",
		Help:           "Tenants of a backend with a tenant per namespace in the last round of series listings, by backend and state: listed, or over_limit (past its tenant.maxTenants, not listed).",
		StabilityLevel: basemetrics.ALPHA,
	}, []string{"backend", "state"})

	all = []basemetrics.Registerable{
		tenantQueries, tenantRefused, discoveryTenants, answerAnnotations,
		sharedAnswers, sharedAge, sharedRefreshes, sharedQueries,
		queryDuration, discoveryDuration, discoveryLastSuccess, discoveredMetrics,
		reloadSuccessful, reloadLastSuccess, reloads, resolvedObjects, rulesLeftOut, zeroed,
		forwarded, forwardDuration, upstreamDiscovered, teamQueriesLimited, teamRules, teamCompileTimeouts, seriesDropped, statusWriter, statusWrites,
	}
)

// CacheSizer reports how many objects each informer cache holds, by
// resource (e.g. "pods", "deployments.apps").
type CacheSizer interface {
	CacheSizes() map[string]int
}

var registerOnce sync.Once

// Registry is where the metrics are registered: component-base's
// KubeRegistry (a test's own), or the legacy registry the API server
// serves (Register).
type Registry interface {
	MustRegister(...basemetrics.Registerable)
	CustomMustRegister(...basemetrics.StableCollector)
}

// legacy is component-base's legacy registry as a Registry.
type legacy struct{}

func (legacy) MustRegister(ms ...basemetrics.Registerable) { legacyregistry.MustRegister(ms...) }
func (legacy) CustomMustRegister(cs ...basemetrics.StableCollector) {
	legacyregistry.CustomMustRegister(cs...)
}

// Register adds the adapter's metrics to the legacy registry (RegisterOn),
// with the informer cache sizes read from caches at each scrape. Later
// calls do nothing.
func Register(caches CacheSizer) {
	registerOnce.Do(func() { RegisterOn(legacy{}, caches) })
}

// RegisterOn adds the metrics to r, with the informer cache sizes read
// from caches (if not nil) at each scrape.
func RegisterOn(r Registry, caches CacheSizer) {
	r.MustRegister(all...)
	if caches != nil {
		r.CustomMustRegister(newCacheCollector(caches))
	}
}

// Outcome classifies a query's result.
func Outcome(samples int, err error) string {
	if err == nil {
		if samples == 0 {
			return OutcomeNoData
		}
		return OutcomeOK
	}
	var warned *promclient.WarningsError
	if errors.As(err, &warned) {
		return OutcomeWarnings
	}
	switch promclient.Classify(err) {
	case promclient.Canceled:
		return OutcomeCanceled
	case promclient.Timeout:
		return OutcomeTimeout
	case promclient.BadQuery, promclient.Execution:
		return OutcomeBadQuery
	default:
		return OutcomeUnavailable
	}
}

// ObserveQuery records a query run for rule of api on backend ("" is the
// default store), which started at start and returned samples samples or
// err.
func ObserveQuery(api, rule, backend string, start time.Time, samples int, err error) {
	queryDuration.WithLabelValues(api, rule, backendLabel(backend), Outcome(samples, err)).Observe(time.Since(start).Seconds())
}

// ObserveTenantQuery records a query sent as tenant to backend.
func ObserveTenantQuery(backend, tenant string, samples int, err error) {
	tenantQueries.WithLabelValues(backendLabel(backend), tenant, Outcome(samples, err)).Inc()
}

// ObserveAnnotations records what a store said about an answer beside its
// values, by backend, kind (warning, partial, info) and whether the answer
// was served or refused for it (err).
func ObserveAnnotations(backend string, ann promclient.Annotations, err error) {
	if ann.Empty() {
		return
	}
	outcome := "served"
	if err != nil {
		outcome = "refused"
	}
	b := backendLabel(backend)
	if len(ann.Warnings) > 0 {
		answerAnnotations.WithLabelValues(b, "warning", outcome).Inc()
	}
	if ann.Partial {
		answerAnnotations.WithLabelValues(b, "partial", outcome).Inc()
	}
	if len(ann.Infos) > 0 {
		answerAnnotations.WithLabelValues(b, "info", outcome).Inc()
	}
}

// Where a shared answer came from (ObserveShared).
const (
	// SharedFromAnswer is an answer taken from the shared query's last
	// answer.
	SharedFromAnswer = "answer"
	// SharedFromQuery is an answer that needed the shared query to run
	// (objects not covered yet, or an answer older than the bound).
	SharedFromQuery = "query"
)

// ObserveShared records an answer of rule served from a shared query
// (source: SharedFromAnswer or SharedFromQuery), age old.
func ObserveShared(rule, source string, age time.Duration) {
	sharedAnswers.WithLabelValues(rule, source).Inc()
	sharedAge.WithLabelValues(rule).Observe(age.Seconds())
}

// ObserveSharedRefresh records a run of a shared query of rule.
func ObserveSharedRefresh(rule string, err error) {
	result := "success"
	if err != nil {
		result = "failure"
	}
	sharedRefreshes.WithLabelValues(rule, result).Inc()
}

// SetSharedQueries records how many shared queries are kept.
func SetSharedQueries(n int) { sharedQueries.Set(float64(n)) }

// ObserveTenantRefused records a request refused for want of a tenant on
// backend.
func ObserveTenantRefused(backend string) {
	tenantRefused.WithLabelValues(backendLabel(backend)).Inc()
}

// SetDiscoveryTenants records how many tenants of backend the last round
// listed, and how many it left out past the backend's bound.
func SetDiscoveryTenants(backend string, listed, overLimit int) {
	discoveryTenants.WithLabelValues(backendLabel(backend), "listed").Set(float64(listed))
	discoveryTenants.WithLabelValues(backendLabel(backend), "over_limit").Set(float64(overLimit))
}

// backendLabel is a store's name as the backend label says it.
func backendLabel(backend string) string {
	if backend == "" {
		return "default"
	}
	return backend
}

// ObserveZeroed records n values of rule answered 0 by its emptyIsZero.
func ObserveZeroed(api, rule string, n int) {
	zeroed.WithLabelValues(api, rule).Add(float64(n))
}

// ObserveForward records a request forwarded to an upstream, its answer's
// status (code, e.g. "200", "503", "none") and duration.
func ObserveForward(upstream, api, code string, d time.Duration) {
	forwarded.WithLabelValues(upstream, api, code).Inc()
	forwardDuration.WithLabelValues(upstream).Observe(d.Seconds())
}

// ObserveUpstreamDiscovery records a successful read of an upstream's
// discovery of group.
func ObserveUpstreamDiscovery(upstream, group string, at time.Time) {
	upstreamDiscovered.WithLabelValues(upstream, group).Set(float64(at.UnixNano()) / 1e9)
}

// ObserveDiscovery records one discovery round's duration.
func ObserveDiscovery(d time.Duration) { discoveryDuration.Observe(d.Seconds()) }

// RuleDiscovery is what one discovery round found for one rule.
type RuleDiscovery struct {
	Rule string
	// Backend is the store the rule reads ("": the default).
	Backend string
	// Listed is when its series were last listed successfully; zero if
	// never.
	Listed time.Time
	// Metrics is how many metrics it serves.
	Metrics int
}

// SetDiscovered replaces what the metrics say of the rules of api: rules
// no longer in the config disappear from them.
func SetDiscovered(api string, rs []RuleDiscovery) {
	discoveredMu.Lock()
	defer discoveredMu.Unlock()
	for _, old := range discoveredRules[api] {
		discoveryLastSuccess.DeleteLabelValues(api, old.Rule)
		discoveredMetrics.DeleteLabelValues(api, old.Rule)
		if !slices.ContainsFunc(rs, func(r RuleDiscovery) bool { return r.Rule == old.Rule && r.Backend == old.Backend }) {
			// A rule a reload removed, or moved to another store: its
			// query series go too.
			for _, o := range outcomes {
				queryDuration.Delete(map[string]string{"api": api, "rule": old.Rule, "backend": backendLabel(old.Backend), "outcome": o})
			}
			if !slices.ContainsFunc(rs, func(r RuleDiscovery) bool { return r.Rule == old.Rule }) {
				zeroed.Delete(map[string]string{"api": api, "rule": old.Rule})
			}
		}
	}
	for _, r := range rs {
		if !r.Listed.IsZero() {
			discoveryLastSuccess.WithLabelValues(api, r.Rule).Set(float64(r.Listed.UnixNano()) / 1e9)
		}
		discoveredMetrics.WithLabelValues(api, r.Rule).Set(float64(r.Metrics))
	}
	discoveredRules[api] = slices.Clone(rs)
}

var (
	discoveredMu    sync.Mutex
	discoveredRules = map[string][]RuleDiscovery{}
)

// SetLeftOut replaces the rules reported as left out.
func SetLeftOut(rules []string) {
	rulesLeftOut.Reset()
	for _, r := range rules {
		rulesLeftOut.WithLabelValues(r).Set(1)
	}
}

// SetLoaded records the rules loaded at startup: not a reload.
func SetLoaded(at time.Time) {
	reloadSuccessful.Set(1)
	reloadLastSuccess.Set(float64(at.UnixNano()) / 1e9)
}

// ObserveReload records a reload attempt of the rules file.
func ObserveReload(ok bool, at time.Time) {
	if !ok {
		reloadSuccessful.Set(0)
		reloads.WithLabelValues("failure").Inc()
		return
	}
	reloadSuccessful.Set(1)
	reloadLastSuccess.Set(float64(at.UnixNano()) / 1e9)
	reloads.WithLabelValues("success").Inc()
}

// ObserveTeamLimit records a query of namespace's rule objects stopped by
// limit ("concurrency" or "timeout").
func ObserveTeamLimit(namespace, limit string) {
	teamQueriesLimited.WithLabelValues(namespace, limit).Inc()
}

// SetStatusWriter records whether this replica writes MetricRule status.
func SetStatusWriter(leading bool) {
	v := 0.0
	if leading {
		v = 1
	}
	statusWriter.Set(v)
}

// ObserveStatusWrite records a MetricRule status write and its result.
func ObserveStatusWrite(result string) { statusWrites.WithLabelValues(result).Inc() }

// ObserveSeriesDropped records n series discovery dropped, and why.
func ObserveSeriesDropped(reason string, n int) {
	seriesDropped.WithLabelValues(reason).Add(float64(n))
}

// ObserveCompileTimeout records a rule object of namespace refused for
// taking too long to compile.
func ObserveCompileTimeout(namespace string) {
	teamCompileTimeouts.WithLabelValues(namespace).Inc()
}

// SetTeamRules records how many rule objects are in each state.
func SetTeamRules(byState map[string]int) {
	for _, state := range []string{"accepted", "invalid", "over_limit"} {
		teamRules.WithLabelValues(state).Set(float64(byState[state]))
	}
}

// ObserveResolved records how many objects of resource a request resolved.
func ObserveResolved(resource string, n int) {
	resolvedObjects.WithLabelValues(resource).Observe(float64(n))
}

// cacheCollector reports the informer cache sizes at each scrape.
type cacheCollector struct {
	basemetrics.BaseStableCollector
	caches CacheSizer
}

var cacheObjectsDesc = basemetrics.NewDesc(
	basemetrics.BuildFQName(Namespace, "informer", "cached_objects"),
	"Objects held by each informer cache of the adapter, by resource.",
	[]string{"resource"}, nil, basemetrics.ALPHA, "")

func newCacheCollector(caches CacheSizer) *cacheCollector {
	return &cacheCollector{caches: caches}
}

func (c *cacheCollector) DescribeWithStability(ch chan<- *basemetrics.Desc) {
	ch <- cacheObjectsDesc
}

func (c *cacheCollector) CollectWithStability(ch chan<- basemetrics.Metric) {
	for resource, n := range c.caches.CacheSizes() {
		ch <- basemetrics.NewLazyConstMetric(cacheObjectsDesc, basemetrics.GaugeValue, float64(n), resource)
	}
}
