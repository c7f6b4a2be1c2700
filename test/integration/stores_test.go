package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/backends"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// shardPods is an ObjectResolver of one namespace's pods, each labelled
// with its shard: the store is what this suite runs for real.
type shardPods struct {
	namespace string
	shard     map[string]string // pod -> shard
}

func (s shardPods) PodsMatching(_ context.Context, namespace string, sel labels.Selector) ([]string, error) {
	var out []string
	if namespace != s.namespace {
		return nil, nil
	}
	for pod, shard := range s.shard {
		if sel.Matches(labels.Set{"shard": shard}) {
			out = append(out, pod)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (s shardPods) ObjectsMatching(context.Context, schema.GroupResource, string, labels.Selector) ([]string, error) {
	return nil, fmt.Errorf("only pods here")
}

func (s shardPods) PodsFor(context.Context, schema.GroupResource, string, string) ([]string, error) {
	return nil, fmt.Errorf("only pods here")
}

// TestVictoriaMetricsQueryLengthLimit: a real VictoriaMetrics holds 10,000
// pods' series; an HPA's selector picks 2,000 of them, whose query (40 KB)
// VictoriaMetrics refuses whole (its -search.maxQueryLen is 16 KiB). The
// adapter, told the limit (the backend's maxQueryLength), sends it in
// parts that each fit and answers every pod with the value written for
// it; VictoriaMetrics' own request counter shows the parts.
func TestVictoriaMetricsQueryLengthLimit(t *testing.T) {
	g, dir := serversGroup(t, "victoria-metrics")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := localstack.StartVictoriaMetrics(ctx, g, dir, "victoria-metrics")
	if err != nil {
		t.Fatal(err)
	}
	const pods, selected = 10000, 2000
	res := shardPods{namespace: "shop", shard: map[string]string{}}
	want := map[string]float64{}
	var text strings.Builder
	for i := range pods {
		pod := fmt.Sprintf("app-7f9c6d5b4-%05d", i)
		shard := "b"
		if i < selected {
			shard = "a"
			want[pod] = float64(i)
		}
		res.shard[pod] = shard
		fmt.Fprintf(&text, "app_memory_bytes{namespace=%q,pod=%q} %d\n", "shop", pod, i)
	}
	if err := vm.Import(ctx, []byte(text.String())); err != nil {
		t.Fatal(err)
	}

	// The store refuses the whole query, as the adapter would render it.
	var names []string
	for pod := range want {
		names = append(names, pod)
	}
	whole := fmt.Sprintf("sum by (pod) (app_memory_bytes{%s})", promql.Join([]promql.Matcher{
		promql.Equals("namespace", "shop"), promql.OneOf("pod", names)}))
	if code, body := vmQuery(ctx, t, vm.URL, whole); code == http.StatusOK || !strings.Contains(body, "maxQueryLen") {
		t.Fatalf("VictoriaMetrics answered the whole %d-byte query: %d %s; the test needs one it refuses", len(whole), code, body)
	}

	file := fmt.Sprintf(`backends:
- name: vm
  url: %s
  maxQueryLength: 16384
rules:
- seriesQuery: 'app_memory_bytes{namespace!="",pod!=""}'
  backend: vm
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: ^app_memory_bytes$, as: memory_bytes}
  metricsQuery: sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})
`, vm.URL)
	set, err := rules.Parse([]byte(file), "stores.yaml")
	if err != nil {
		t.Fatal(err)
	}
	stores, err := backends.New(config.Backend{URL: "http://127.0.0.1:1", Timeout: 5e9}, set.Backends, set.BackendWhere)
	if err != nil {
		t.Fatal(err)
	}
	p := custommetrics.New(custommetrics.Config{Rules: set.Custom, Mapper: rules.BuiltinMapper(), Querier: stores.Querier(""),
		Backends: func(name string) promclient.Querier { return stores.Querier(name) }, Resolver: res})
	disc := discovery.New(discovery.Config{Queries: discovery.QueriesOf(set.Custom).File, Lister: stores.Store("").Client, Interval: time.Second,
		Backends: func(name string) discovery.SeriesLister { return stores.Store(name).Client }})
	disc.Subscribe(p.Update)
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	go disc.Run(dctx)

	before := vmQueries(ctx, t, vm.URL)
	info := provider.CustomMetricInfo{GroupResource: rules.Pods, Namespaced: true, Metric: "memory_bytes"}
	sel := labels.SelectorFromSet(labels.Set{"shard": "a"})
	var lastErr error
	var got map[string]float64
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := p.GetMetricBySelector(ctx, "shop", sel, info, labels.Everything())
		if lastErr = err; err != nil {
			return false, nil
		}
		got = map[string]float64{}
		for _, v := range list.Items {
			got[v.DescribedObject.Name] = v.Value.AsApproximateFloat64()
		}
		return true, nil
	}); err != nil {
		t.Fatalf("the selector's pods were never served: %v", lastErr)
	}
	if len(got) != selected {
		t.Fatalf("served %d pods, want the %d selected", len(got), selected)
	}
	for pod, v := range want {
		if got[pod] != v {
			t.Fatalf("%s = %v, want %v (the value written)", pod, got[pod], v)
		}
	}
	parts := vmQueries(ctx, t, vm.URL) - before
	// 40 KB in parts of at most 16 KiB: at least three.
	if parts < 3 {
		t.Fatalf("VictoriaMetrics answered %v queries, want the request in parts (at least 3)", parts)
	}
	t.Logf("%d pods of %d served from a %d-byte query sent in %v parts", len(got), pods, len(whole), parts)
}

// vmQuery sends expr to VictoriaMetrics as an instant query.
func vmQuery(ctx context.Context, t *testing.T, base, expr string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/v1/query", strings.NewReader(url.Values{"query": {expr}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

var vmQueryCounter = regexp.MustCompile(`(?m)^vm_http_requests_total\{path="/api/v1/query"\} (\d+)$`)

// vmQueries is how many instant queries VictoriaMetrics has served, from
// its own /metrics.
func vmQueries(ctx context.Context, t *testing.T, base string) float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := vmQueryCounter.FindSubmatch(b)
	if m == nil {
		t.Fatal("VictoriaMetrics' /metrics has no vm_http_requests_total for /api/v1/query")
	}
	n, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
