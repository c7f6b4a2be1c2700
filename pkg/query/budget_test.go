package query

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// failing fails every query.
type failing struct{}

func (failing) Query(context.Context, string) (model.Vector, error) { return nil, errors.New("down") }

// blocking answers when release closes, or fails when the query's context
// ends first.
type blocking struct {
	started chan struct{}
	release chan struct{}
}

func (b blocking) Query(ctx context.Context, _ string) (model.Vector, error) {
	b.started <- struct{}{}
	select {
	case <-b.release:
		return model.Vector{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func teamQuery(ns string, budgets *Budgets) Query {
	return Query{API: "custom", Rule: "MetricRule " + ns + "/rps", Namespace: ns, Budgets: budgets,
		What: func() string { return "metric rps" }, Render: func() (string, error) { return "up", nil }}
}

// A namespace's rule objects run at most maxConcurrent queries: the next
// one is a 429 at once, another namespace's and the file's rules are not
// held back, and the refusal is the rule's last failure.
func TestBudgetsBoundConcurrentQueriesPerNamespace(t *testing.T) {
	budgets := NewBudgets(2, 0)
	failures := recordFailures(budgets)
	prom := blocking{started: make(chan struct{}, 10), release: make(chan struct{})}
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := Run(context.Background(), Stores{Default: prom}, teamQuery("team-a", budgets))
			errs <- err
		}()
	}
	<-prom.started
	<-prom.started
	_, err := Run(context.Background(), Stores{Default: prom}, teamQuery("team-a", budgets))
	if !apierrors.IsTooManyRequests(err) || !strings.Contains(err.Error(), "--metric-rules-max-concurrent-queries") {
		t.Fatalf("a third query of team-a: %v, want 429 naming the flag", err)
	}
	if f := failures(); len(f) != 1 || !strings.Contains(f[0], "MetricRule team-a/rps: namespace team-a has 2 queries") {
		t.Errorf("failures reported: %q", f)
	}
	others := make(chan error, 2)
	go func() {
		_, err := Run(context.Background(), Stores{Default: prom}, teamQuery("team-b", budgets))
		others <- err
	}()
	go func() {
		_, err := Run(context.Background(), Stores{Default: prom}, teamQuery("", budgets))
		others <- err
	}()
	<-prom.started
	<-prom.started
	close(prom.release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("a query within the budget: %v", err)
		}
		if err := <-others; err != nil {
			t.Errorf("another namespace's or the file's query: %v", err)
		}
	}
	if _, err := Run(context.Background(), Stores{Default: prom}, teamQuery("team-a", budgets)); err != nil {
		t.Errorf("after the others ended, team-a's budget is free again: %v", err)
	}
}

// A query of a rule object is cut at the namespace's timeout, and the
// error says which limit cut it.
func TestBudgetsCutQueriesAtTheTimeout(t *testing.T) {
	budgets := NewBudgets(0, 50*time.Millisecond)
	failures := recordFailures(budgets)
	prom := blocking{started: make(chan struct{}, 1), release: make(chan struct{})}
	_, err := Run(context.Background(), Stores{Default: prom}, teamQuery("team-a", budgets))
	if !apierrors.IsTimeout(err) || !strings.Contains(err.Error(), "--metric-rules-query-timeout") {
		t.Fatalf("got %v, want a 504 naming --metric-rules-query-timeout", err)
	}
	if f := failures(); len(f) != 1 || !strings.Contains(f[0], "MetricRule team-a/rps") {
		t.Errorf("the timeout was not reported: %q", f)
	}
	if _, err := Run(context.Background(), Stores{Default: failing{}}, teamQuery("", budgets)); err == nil || len(failures()) != 1 {
		t.Errorf("a rule of the file's failure was reported: %q", failures())
	}
}

// recordFailures collects what budgets report, as "rule: error".
func recordFailures(budgets *Budgets) func() []string {
	var mu sync.Mutex
	var got []string
	budgets.OnFailure(func(rule string, err error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, rule+": "+err.Error())
	})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}
