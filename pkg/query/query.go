// Package query is the one step every metrics API takes from a rule to
// Prometheus' answer: it renders the rule's query for a request, runs it,
// and records it — in the adapter's metrics (per API, rule and outcome), in
// the request's trace (package trace), in the log at -v=4 — and turns a
// failure into the status the API answers (package apistatus). The
// custom, external and resource metrics providers all call Run with a
// Query, and get its Result, so a query is measured, explained and mapped
// the same way whichever API asks. Stores are the stores a query may run
// on (the default, and those a rules file names), and RunInParts sends a
// query of many objects that is longer than its store takes as parts that
// fit. Budgets bound what each namespace's MetricRules may run at once,
// and for how long.
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
}

// Stores are the stores queries run on: the default one, and the named
// ones (nil when no rule names one).
type Stores struct {
	Default promclient.Querier
	Named   func(name string) promclient.Querier
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
	vec, err := prom.Query(ctx, expr)
	took := time.Since(start)
	if timedOut := done(); timedOut != nil && err != nil {
		err = fmt.Errorf("%w: %w", timedOut, err)
	}
	metrics.ObserveQuery(q.API, q.Rule, q.Backend, start, len(vec), err)
	trace.From(ctx).Queried(trace.Query{Rule: q.Rule, Backend: q.Backend, Expr: expr, Duration: took, Vector: vec, Err: err})
	if err != nil {
		q.Budgets.fail(q.Namespace, q.Rule, err)
		return Result{Expr: expr}, apistatus.Query(err, q.What(), q.Rule)
	}
	if klogV := klog.V(4); klogV.Enabled() {
		klogV.InfoS("Query done", "api", q.API, "rule", q.Rule, "backend", q.Backend, "what", q.What(), "series", len(vec), "duration", took, "expr", expr)
	}
	return Result{Expr: expr, Vector: vec}, nil
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

// RunInParts runs the query of n objects, part(i, j) being the query of
// objects [i, j): whole when it fits its store's longest query
// (maxQueryLength), else in the fewest halvings that each fit, one after
// another, their answers joined. It is for queries whose every answer
// series is one object's (grouped by the object's label), so that the
// parts' answers are the whole's.
func RunInParts(ctx context.Context, stores Stores, n int, part func(i, j int) Query) (Result, error) {
	whole := part(0, n)
	prom, err := stores.For(whole.Backend)
	if err != nil || maxQueryLength(prom) == 0 || n < 2 {
		return Run(ctx, stores, whole)
	}
	limit := maxQueryLength(prom)
	type span struct {
		i, j int
		expr string
	}
	var spans []span
	var split func(i, j int) error
	split = func(i, j int) error {
		expr, err := part(i, j).Render()
		switch {
		case err != nil:
			return err
		case len(expr) <= limit:
			spans = append(spans, span{i, j, expr})
			return nil
		case j-i == 1:
			return fmt.Errorf("%s: %w", whole.Rule, fits(prom, expr))
		}
		mid := (i + j) / 2
		if err := split(i, mid); err != nil {
			return err
		}
		return split(mid, j)
	}
	if err := split(0, n); err != nil {
		whole.Budgets.fail(whole.Namespace, whole.Rule, err)
		return Result{}, apierrors.NewInternalError(err)
	}
	if len(spans) > 1 {
		if v := klog.V(4); v.Enabled() {
			v.InfoS("Query longer than its store takes: sent in parts", "rule", whole.Rule, "backend", whole.Backend, "parts", len(spans), "limit", limit)
		}
	}
	var out Result
	for _, sp := range spans {
		q := part(sp.i, sp.j)
		q.Render = func() (string, error) { return sp.expr, nil }
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
