// Package trace records what the adapter did for one request: the rule
// that serves it, the objects and pods it resolved (each a Resolution),
// the PromQL it ran and Prometheus' raw answer (each a Query). The steps of the request path record into a
// Trace carried by the request's context; without one, recording costs a
// context lookup. Package explain starts a Trace for the request it
// explains and reports it.
//
// It records; it does not decide, serve or print anything.
package trace

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/common/model"
)

// Trace is what the providers did for one request.
type Trace struct {
	mu       sync.Mutex
	rule     string
	series   string
	resolved []Resolution
	queries  []Query
	// notShared says why the request's query was not shared.
	notShared string
}

// Resolution is one lookup of objects in the informer caches.
type Resolution struct {
	// What was looked up, e.g. "pods matching app=app in default".
	What  string
	Names []string
}

// Query is one PromQL query and Prometheus' answer.
type Query struct {
	Rule string
	// Backend is the store it ran on ("": the default); Tenant, the
	// tenant it ran as, on a store with a tenant per namespace.
	Backend  string
	Tenant   string
	Expr     string
	Duration time.Duration
	Vector   model.Vector
	Err      error
	// Zeroed is how many values the rule's emptyIsZero answered 0 for
	// want of series.
	Zeroed int
	// Annotations are the store's warnings, partial flag and infos on
	// the answer, in a line ("" when it said nothing).
	Annotations string
	// Shared is an answer taken from a query shared by the requests
	// about the same rule and namespace (query.Sharing), Age old.
	Shared bool
	Age    time.Duration
}

type traceKey struct{}

// WithTrace returns a context whose requests record into t.
func WithTrace(ctx context.Context, t *Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

// From returns the context's Trace, or nil. Every method of a nil Trace
// does nothing.
func From(ctx context.Context) *Trace {
	t, _ := ctx.Value(traceKey{}).(*Trace)
	return t
}

// Rule records the rule serving the request and the series its metric
// comes from.
func (t *Trace) Rule(rule, series string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rule, t.series = rule, series
}

// Resolved records a lookup of objects.
func (t *Trace) Resolved(what string, names []string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.resolved = append(t.resolved, Resolution{What: what, Names: append([]string(nil), names...)})
}

// Queried records a query and its answer.
func (t *Trace) Queried(q Query) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.queries = append(t.queries, q)
}

// Zeroed records that n values of the last query of rule were answered 0
// by its emptyIsZero.
func (t *Trace) Zeroed(rule string, n int) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := len(t.queries) - 1; i >= 0; i-- {
		if t.queries[i].Rule == rule {
			t.queries[i].Zeroed += n
			return
		}
	}
}

// NotShared records why the request's query could not be shared with
// other requests (query.Sharing).
func (t *Trace) NotShared(why string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.notShared = why
}

// WhyNotShared is what NotShared recorded.
func (t *Trace) WhyNotShared() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.notShared
}

// Snapshot copies what was recorded.
func (t *Trace) Snapshot() (rule, series string, resolved []Resolution, queries []Query) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rule, t.series, append([]Resolution(nil), t.resolved...), append([]Query(nil), t.queries...)
}
