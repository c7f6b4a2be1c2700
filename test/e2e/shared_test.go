package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
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
	// Prometheus has the app's series first (the stack's adapter serves
	// them): a shared answer is kept up to its bound, and one made before
	// the series exist would be empty for all of it.
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, lastErr = podsSum(ctx, namespace, "requests-per-second")
		return lastErr == nil, nil
	}); err != nil {
		t.Fatalf("the stack's adapter serves no requests-per-second in %s: %v", namespace, lastErr)
	}
	// A bound of ten minutes: no background refresh (every five) falls
	// inside the test.
	a := runAdapter(ctx, t, "adapter-shared", stack.AdapterRules(), "--shared-query-max-age=10m", "--metrics-relist-interval=5s")
	paths := []string{
		"/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace + "/pods/*/requests-per-second?labelSelector=" + url.QueryEscape("app=app"),
		"/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace + "/deployments.apps/app/requests-per-second",
		"/apis/external.metrics.k8s.io/v1beta1/namespaces/" + namespace + "/app_requests_per_second?labelSelector=" + url.QueryEscape("container=app"),
	}
	round := func(ctx context.Context) error {
		for _, p := range paths {
			code, body, err := stack.Get(ctx, "admin", a.URL+p, nil)
			if err != nil {
				dumpGoroutines(t, a)
				return err
			}
			var list struct{ Items []json.RawMessage }
			if code != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list.Items) == 0 {
				return fmt.Errorf("GET %s: %d %s", p, code, body)
			}
		}
		return nil
	}
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

// dumpGoroutines writes the goroutines of adapter a (its /debug/pprof) to
// the run folder, once per test: a request to it that does not return
// shows where it waits.
func dumpGoroutines(t *testing.T, a *localstack.AdapterProcess) {
	t.Helper()
	file := filepath.Join(stack.Dir, a.Name+".goroutines")
	if _, err := os.Stat(file); err == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, body, err := stack.Get(ctx, "admin", a.URL+"/debug/pprof/goroutine?debug=2", nil)
	if err != nil || code != http.StatusOK {
		t.Logf("the goroutines of %s: %d %v", a.Name, code, err)
		return
	}
	if err := os.WriteFile(file, body, 0o644); err != nil {
		t.Log(err)
		return
	}
	t.Logf("the goroutines of %s are in %s", a.Name, file)
}
