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
// Timeout. The rules file's rules are not bounded here. Budgets also keep
// each rule object's last failed query, for its status.
//
// A nil *Budgets bounds nothing and records nothing.
type Budgets struct {
	maxConcurrent int
	timeout       time.Duration

	mu      sync.Mutex
	running map[string]int
	failed  map[string]Failure
}

// Failure is a rule's last failed query.
type Failure struct {
	Time    time.Time
	Message string
}

// NewBudgets returns Budgets of maxConcurrent queries per namespace (0:
// unbounded) of at most timeout each (0: none).
func NewBudgets(maxConcurrent int, timeout time.Duration) *Budgets {
	return &Budgets{maxConcurrent: maxConcurrent, timeout: timeout, running: map[string]int{}, failed: map[string]Failure{}}
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

// fail records the failed query of a rule object of namespace; the file's
// rules ("") have no status to report it in.
func (b *Budgets) fail(namespace, rule string, err error) {
	if b == nil || namespace == "" {
		return
	}
	b.mu.Lock()
	b.failed[rule] = Failure{Time: time.Now(), Message: err.Error()}
	b.mu.Unlock()
}

// LastFailure is the last failed query of a rule object (named as
// rules.Rule.String names it), if any.
func (b *Budgets) LastFailure(rule string) (Failure, bool) {
	if b == nil {
		return Failure{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.failed[rule]
	return f, ok
}

// Forget drops what is recorded of rules no longer served.
func (b *Budgets) Forget(keep func(rule string) bool) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for r := range b.failed {
		if !keep(r) {
			delete(b.failed, r)
		}
	}
}
