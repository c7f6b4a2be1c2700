package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// TestSharedQueries runs a second adapter with shared queries
// (--shared-query-max-age) against the stack's Prometheus and asks it, as
// HPAs do, for a Pods metric, a Deployment's metric served from its pods
// and an external metric selected by one label: every answer is served,
// and once the first round has run the shared queries, ten more rounds of
// the same requests send no query to Prometheus at all, each answered
// from the shared answers (the adapter's own metrics say so).
func TestSharedQueries(t *testing.T) {
	const namespace = "shared"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := stack.DeployApp(ctx, namespace); err != nil {
		t.Fatal(err)
	}
	// A bound of ten minutes: no background refresh (every five) falls
	// inside the test.
	a, err := stack.RunAdapter(ctx, "adapter-shared", stack.AdapterRules(), "--shared-query-max-age=10m", "--metrics-relist-interval=5s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stack.Procs.Remove(a.Process)
		if err := a.Stop(10 * time.Second); err != nil {
			t.Error(err)
		}
	})
	paths := []string{
		"/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace + "/pods/*/requests-per-second?labelSelector=" + url.QueryEscape("app=app"),
		"/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace + "/deployments.apps/app/requests-per-second",
		"/apis/external.metrics.k8s.io/v1beta1/namespaces/" + namespace + "/app_requests_per_second?labelSelector=" + url.QueryEscape("container=app"),
	}
	round := func(ctx context.Context) error {
		for _, p := range paths {
			code, body, err := stack.Get(ctx, "admin", a.URL+p, nil)
			if err != nil {
				return err
			}
			var list struct{ Items []json.RawMessage }
			if code != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list.Items) == 0 {
				return fmt.Errorf("GET %s: %d %s", p, code, body)
			}
		}
		return nil
	}
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		lastErr = round(ctx)
		return lastErr == nil, nil
	}); err != nil {
		t.Fatalf("the shared-query adapter did not serve all three: %v", lastErr)
	}
	counts := func() (queries, fromAnswer float64) {
		mfs, err := stack.Metrics(ctx, a.URL)
		if err != nil {
			t.Fatal(err)
		}
		queries, _ = localstack.Sum(mfs, "custom_metrics_adapter_prometheus_query_duration_seconds", nil)
		fromAnswer, _ = localstack.Sum(mfs, "custom_metrics_adapter_shared_query_answers_total", map[string]string{"source": "answer"})
		return queries, fromAnswer
	}
	queries0, answers0 := counts()
	for range 10 {
		if err := round(ctx); err != nil {
			t.Fatal(err)
		}
	}
	queries1, answers1 := counts()
	if queries1 != queries0 {
		t.Errorf("10 rounds of 3 requests sent %v queries to Prometheus, want none: every answer shared", queries1-queries0)
	}
	if answers1-answers0 != 30 {
		t.Errorf("%v answers from shared answers, want 30", answers1-answers0)
	}
}
