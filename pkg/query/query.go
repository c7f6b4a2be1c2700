// Package query is the one step every metrics API takes from a rule to
// Prometheus' answer: it renders the rule's query for a request, runs it,
// and records it — in the adapter's metrics (per API, rule and outcome), in
// the request's trace (package trace), in the log at -v=4 — and turns a
// failure into the status the API answers (package apistatus). The
// custom, external and resource metrics providers all call Run with a
// Query, and get its Result, so a query is measured, explained and mapped
// the same way whichever API asks. Stores are the stores a query may run
// on (the default, and those a rules file names), and RunMany sends a
// query of many objects in parts: one per tenant on a store with a tenant
// per namespace, and parts that fit on a store with a query length limit.
// Budgets bound what each namespace's MetricRules may run at once, and for
// how long. Sharing answers the requests about one Shape (a rule's query
// in one namespace, over objects) from one query covering them all,
// refreshed in the background, each Shared answer bounded in age.
//
// It does not build PromQL (package rules renders it) and does not turn
// samples into values (the providers and package values do).
package query

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
)

// Query is one query of one request.
type Query struct {
	// API is the API asking: metrics.CustomAPI, ExternalAPI or
	// ResourceAPI.
	API string
	// Rule names the rule as the config file does (rules[2],
	// resourceRules.cpu): in the adapter's metrics, the trace and errors.
	Rule string
	// What names what was asked, for errors: "metric requests-per-second
	// for pods". It is called only when there is something to say.
	What func() string
	// Render renders the rule's query for the request.
	Render func() (string, error)
	// EmptyIsZero is the rule's emptyIsZero: what the query returns no
	// series for is answered 0 (see Zeroed).
	EmptyIsZero bool
	// Namespace is the namespace of a rule object (a team's rule,
	// rules.Rule.Namespace), whose queries Budgets bound; "" for a rule of
	// the file.
	Namespace string
	Budgets   *Budgets
	// Backend names the store the rule reads ("": the default).
	Backend string
	// RequestNamespace is the namespace the request is about ("" for
	// what is in none: nodes, namespaces): on a store with a tenant per
	// namespace, the query runs as its tenant.
	RequestNamespace string

	// tenant, when pinned, is the tenant RunMany resolved for the
	// part's objects.
	tenant string
	pinned bool
}

// Stores are the stores queries run on: the default one, and the named
// ones (nil when no rule names one).
type Stores struct {
	Default promclient.Querier
	Named   func(name string) promclient.Querier
	// Tenant is the tenant of namespace ns on the store named backend
	// (backends.Tenants.Of); has is false for a store without tenants.
	// Nil: no store has tenants.
	Tenant func(ctx context.Context, backend, ns string) (tenant string, has bool, err error)
}

// tenantOf is the tenant q runs as: "" on a store without tenants.
func (s Stores) tenantOf(ctx context.Context, q Query) (string, error) {
	if q.pinned || s.Tenant == nil {
		return q.tenant, nil
	}
	tenant, _, err := s.Tenant(ctx, q.Backend, q.RequestNamespace)
	return tenant, err
}

// For is the querier of the store named name ("" is the default).
func (s Stores) For(name string) (promclient.Querier, error) {
	if name == "" {
		return s.Default, nil
	}
	if s.Named != nil {
		if q := s.Named(name); q != nil {
			return q, nil
		}
	}
	return nil, fmt.Errorf("no store is named %q", name)
}

// Of is the query of a rule of the custom or the external metrics API
// (the file's, or a team's) for one request: named as the rule, its
// emptyIsZero, and, for a team's rule, its namespace's budget. It renders
// the rule's metricsQuery for series, matchers and groupBy.
func Of(api string, r *rules.Rule, series string, matchers []promql.Matcher, groupBy []string, budgets *Budgets, what func() string) Query {
	return Query{
		API: api, Rule: r.String(), What: what, EmptyIsZero: r.EmptyIsZero(),
		Render:    func() (string, error) { return r.Render(series, matchers, groupBy) },
		Namespace: r.Namespace(), Budgets: budgets, Backend: r.Backend(),
	}
}

// In is q for a request about namespace ns (Query.RequestNamespace).
func (q Query) In(ns string) Query {
	q.RequestNamespace = ns
	return q
}

// Result is what Prometheus answered.
type Result struct {
	// Expr is the PromQL that ran.
	Expr   string
	Vector model.Vector
}

// Run renders q and runs it on prom, within its namespace's budget when its
// rule is a team's. Its errors are StatusErrors: a query that does not
// render is a 500 naming the rule, one over its namespace's budget a 429,
// a failed query what apistatus.Query says.
func Run(ctx context.Context, stores Stores, q Query) (Result, error) {
	prom, err := stores.For(q.Backend)
	if err != nil {
		return Result{}, apierrors.NewInternalError(fmt.Errorf("%s: %w", q.Rule, err))
	}
	// The tenant first: a namespace without one is refused before
	// anything is rendered or sent.
	tenant, err := stores.tenantOf(ctx, q)
	if err != nil {
		trace.From(ctx).Queried(trace.Query{Rule: q.Rule, Backend: q.Backend, Err: err})
		return Result{}, err
	}
	if tenant != "" {
		ctx = promclient.WithTenant(ctx, tenant)
	}
	// A team's rule renders within its namespace's budget too: the render
	// is bounded (rules.CompileTeam), and counted with its query.
	ctx, done, err := q.Budgets.enter(ctx, q.Namespace)
	if err != nil {
		q.Budgets.fail(q.Namespace, q.Rule, err)
		trace.From(ctx).Queried(trace.Query{Rule: q.Rule, Err: err})
		return Result{}, err
	}
	expr, err := q.Render()
	if err == nil {
		err = fits(prom, expr)
	}
	if err != nil {
		_ = done()
		q.Budgets.fail(q.Namespace, q.Rule, err)
		return Result{}, apierrors.NewInternalError(fmt.Errorf("%s: %w", q.Rule, err))
	}
	start := time.Now()
	vec, ann, err := query(ctx, prom, expr)
	took := time.Since(start)
	if timedOut := done(); timedOut != nil && err != nil {
		err = fmt.Errorf("%w: %w", timedOut, err)
	}
	metrics.ObserveQuery(q.API, q.Rule, q.Backend, start, len(vec), err)
	metrics.ObserveAnnotations(q.Backend, ann, err)
	if tenant != "" {
		metrics.ObserveTenantQuery(q.Backend, tenant, len(vec), err)
	}
	trace.From(ctx).Queried(trace.Query{Rule: q.Rule, Backend: q.Backend, Tenant: tenant, Expr: expr, Duration: took, Vector: vec, Err: err,
		Annotations: ann.String()})
	if err != nil {
		q.Budgets.fail(q.Namespace, q.Rule, err)
		return Result{Expr: expr}, apistatus.Query(err, q.What(), q.Rule)
	}
	if klogV := klog.V(4); klogV.Enabled() {
		klogV.InfoS("Query done", "api", q.API, "rule", q.Rule, "backend", q.Backend, "tenant", tenant, "what", q.What(), "series", len(vec), "duration", took, "expr", promql.Short(expr))
	}
	return Result{Expr: expr, Vector: vec}, nil
}

// query runs expr on prom, with what the store said beside the values
// when prom tells it (promclient.AnnotatedQuerier).
func query(ctx context.Context, prom promclient.Querier, expr string) (model.Vector, promclient.Annotations, error) {
	if aq, ok := prom.(promclient.AnnotatedQuerier); ok {
		return aq.QueryAnnotated(ctx, expr)
	}
	vec, err := prom.Query(ctx, expr)
	return vec, promclient.Annotations{}, err
}

// maxQueryLength is the longest query prom's store takes (0: no limit).
func maxQueryLength(prom promclient.Querier) int {
	if l, ok := prom.(interface{ MaxQueryLength() int }); ok {
		return l.MaxQueryLength()
	}
	return 0
}

// fits refuses, before it is sent, a query longer than its store takes.
func fits(prom promclient.Querier, expr string) error {
	if limit := maxQueryLength(prom); limit > 0 && len(expr) > limit {
		return fmt.Errorf("its query is %d bytes, longer than the %d its store takes (maxQueryLength), and a query of this kind is not sent in parts", len(expr), limit)
	}
	return nil
}

// Many is the query of many objects, each of whose answer series is one
// object's (it is grouped by the object), so that the answers of queries
// of its parts, joined, are its own.
type Many struct {
	// N is how many objects there are.
	N int
	// NamespaceOf is object i's namespace, as whose tenant it is read on
	// a store with a tenant per namespace; nil when every object is in the
	// query's RequestNamespace.
	NamespaceOf func(i int) string
	// Query is the query of the objects ids, ascending indexes in [0, N);
	// nil ids are all of them (see Pick).
	Query func(ids []int) Query
}

// Pick is the values of the objects ids (Many.Query): values itself for
// nil ids, all of them.
func Pick[T any](values []T, ids []int) []T {
	if ids == nil {
		return values
	}
	out := make([]T, len(ids))
	for k, i := range ids {
		out[k] = values[i]
	}
	return out
}

// RunMany runs the query of many objects: whole when it can, else in
// parts run one after another, their answers joined. On a store with a
// tenant per namespace, the objects go in one query per tenant, as that
// tenant; a namespace without a tenant refuses the whole request before
// anything is sent. On a store with a query length limit
// (maxQueryLength), a query longer than it goes as the fewest halvings
// that each fit; one object's query alone too long refuses the request
// before anything is sent.
func RunMany(ctx context.Context, stores Stores, m Many) (Result, error) {
	whole := m.Query(nil)
	prom, err := stores.For(whole.Backend)
	if err != nil {
		return Run(ctx, stores, whole) // the error, counted and traced
	}
	groups, err := byTenant(ctx, stores, m, whole)
	if err != nil {
		return Result{}, err
	}
	limit := maxQueryLength(prom)
	if groups == nil && (limit == 0 || m.N < 2) {
		return Run(ctx, stores, whole)
	}
	if groups == nil {
		groups = []tenantGroup{{pinned: false}}
	}
	type span struct {
		ids    []int
		expr   string
		tenant string
		pinned bool
	}
	var spans []span
	var split func(g tenantGroup, ids []int) error
	split = func(g tenantGroup, ids []int) error {
		expr, err := m.Query(ids).Render()
		switch {
		case err != nil:
			return err
		case limit == 0 || len(expr) <= limit:
			spans = append(spans, span{ids, expr, g.tenant, g.pinned})
			return nil
		case len(ids) == 1 || ids == nil && m.N == 1:
			return fmt.Errorf("%s: %w", whole.Rule, fits(prom, expr))
		}
		if ids == nil {
			ids = make([]int, m.N)
			for i := range ids {
				ids[i] = i
			}
		}
		mid := len(ids) / 2
		if err := split(g, ids[:mid:mid]); err != nil {
			return err
		}
		return split(g, ids[mid:])
	}
	for _, g := range groups {
		if err := split(g, g.ids); err != nil {
			whole.Budgets.fail(whole.Namespace, whole.Rule, err)
			return Result{}, apierrors.NewInternalError(err)
		}
	}
	if len(spans) > len(groups) {
		if v := klog.V(4); v.Enabled() {
			v.InfoS("Query longer than its store takes: sent in parts", "rule", whole.Rule, "backend", whole.Backend, "parts", len(spans), "limit", limit)
		}
	}
	var out Result
	for _, sp := range spans {
		q := m.Query(sp.ids)
		q.Render = func() (string, error) { return sp.expr, nil }
		q.tenant, q.pinned = sp.tenant, sp.pinned
		res, err := Run(ctx, stores, q)
		if err != nil {
			return res, err
		}
		if out.Expr == "" {
			out.Expr = res.Expr
		}
		out.Vector = append(out.Vector, res.Vector...)
	}
	return out, nil
}

// tenantGroup is the objects read as one tenant (nil ids: all of them).
type tenantGroup struct {
	ids    []int
	tenant string
	pinned bool
}

// byTenant groups m's objects by the tenant of their namespace, in the
// order of the tenants' first objects; nil when the store has no tenants
// or the objects are all in the query's namespace (Run resolves its
// tenant).
func byTenant(ctx context.Context, stores Stores, m Many, whole Query) ([]tenantGroup, error) {
	if m.NamespaceOf == nil || stores.Tenant == nil || m.N == 0 {
		return nil, nil
	}
	tenantOf := map[string]string{}
	index := map[string]int{}
	var groups []tenantGroup
	for i := range m.N {
		ns := m.NamespaceOf(i)
		tenant, seen := tenantOf[ns]
		if !seen {
			t, has, err := stores.Tenant(ctx, whole.Backend, ns)
			if err != nil {
				trace.From(ctx).Queried(trace.Query{Rule: whole.Rule, Backend: whole.Backend, Err: err})
				return nil, err
			}
			if !has {
				return nil, nil
			}
			tenant, tenantOf[ns] = t, t
		}
		k, ok := index[tenant]
		if !ok {
			k = len(groups)
			index[tenant] = k
			groups = append(groups, tenantGroup{tenant: tenant, pinned: true})
		}
		groups[k].ids = append(groups[k].ids, i)
	}
	if len(groups) == 1 {
		groups[0].ids = nil // all of them
	}
	return groups, nil
}

// Zeroed records that n values of what q asked for had no series and were
// answered 0 by the rule's emptyIsZero: in the adapter's metrics, the
// explain trace and the log. The providers call it where they make the
// zeros; it is never called for a failed query.
func Zeroed(ctx context.Context, q Query, n int) {
	if n == 0 {
		return
	}
	metrics.ObserveZeroed(q.API, q.Rule, n)
	trace.From(ctx).Zeroed(q.Rule, n)
	if klogV := klog.V(4); klogV.Enabled() {
		klogV.InfoS("No series: answered 0 (emptyIsZero)", "api", q.API, "rule", q.Rule, "what", q.What(), "values", n)
	}
}
