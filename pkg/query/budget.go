package query

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
)

// Budgets bound what the rule objects (MetricRules) of each namespace cost
// Prometheus, so that one team's rules cannot starve the others': at most
// MaxConcurrent of a namespace's queries run at once (more are refused,
// 429, at once: the HPA asks again at its next sync), and each is cut at
// Timeout. The rules file's rules are not bounded here. Each failed query
// of a rule object is handed to the function given to OnFailure (the
// MetricRules controller makes it an Event on the object).
//
// A nil *Budgets bounds nothing and reports nothing.
type Budgets struct {
	maxConcurrent int
	timeout       time.Duration

	mu        sync.Mutex
	running   map[string]int
	onFailure func(rule string, err error)
}

// NewBudgets returns Budgets of maxConcurrent queries per namespace (0:
// unbounded) of at most timeout each (0: none).
func NewBudgets(maxConcurrent int, timeout time.Duration) *Budgets {
	return &Budgets{maxConcurrent: maxConcurrent, timeout: timeout, running: map[string]int{}}
}

// OnFailure sets what is told of each failed query of a rule object: the
// rule (as rules.Rule.String names it) and the error. It must not block.
func (b *Budgets) OnFailure(fn func(rule string, err error)) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.onFailure = fn
	b.mu.Unlock()
}

// enter starts a query of namespace's rule objects: the context it runs
// with and the function that ends it (it says whether the query was cut
// at the timeout), or a 429 when namespace has maxConcurrent queries
// running.
func (b *Budgets) enter(ctx context.Context, namespace string) (context.Context, func() (timedOut error), error) {
	if b == nil || namespace == "" {
		return ctx, func() error { return nil }, nil
	}
	b.mu.Lock()
	if b.maxConcurrent > 0 && b.running[namespace] >= b.maxConcurrent {
		b.mu.Unlock()
		metrics.ObserveTeamLimit(namespace, "concurrency")
		return ctx, nil, apierrors.NewTooManyRequests(fmt.Sprintf(
			"namespace %s has %d queries of its MetricRules running, its limit (--metric-rules-max-concurrent-queries)", namespace, b.maxConcurrent), 1)
	}
	b.running[namespace]++
	b.mu.Unlock()
	parent, cancel := ctx, context.CancelFunc(func() {})
	if b.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, b.timeout)
	}
	return ctx, func() error {
		var timedOut error
		if b.timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil {
			metrics.ObserveTeamLimit(namespace, "timeout")
			timedOut = fmt.Errorf("cut at the %s a query of namespace %s's MetricRules may take (--metric-rules-query-timeout)", b.timeout, namespace)
		}
		cancel()
		b.mu.Lock()
		if b.running[namespace]--; b.running[namespace] == 0 {
			delete(b.running, namespace)
		}
		b.mu.Unlock()
		return timedOut
	}, nil
}

// fail reports the failed query of a rule object of namespace; the file's
// rules ("") have no object to report it on.
func (b *Budgets) fail(namespace, rule string, err error) {
	if b == nil || namespace == "" {
		return
	}
	b.mu.Lock()
	fn := b.onFailure
	b.mu.Unlock()
	if fn != nil {
		fn(rule, err)
	}
}
