// Package bench measures the adapter's query path against a real
// Prometheus holding the series of many pods, next to the same work done
// directly on Prometheus, in one run. Run it with `make bench`.
//
// The pods' series come from one synthetic target that exposes
// app_requests_total{namespace,pod,endpoint} for every pod (honor_labels),
// so Prometheus holds as many series as a cluster of that size would.
package bench

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

var podCount = flag.Int("pods", 10000, "pods whose series Prometheus holds")

const namespace = "bench"

var (
	prom *localstack.Prometheus
	pods []string
)

func podName(i int) string { return fmt.Sprintf("app-%05d", i) }

// exporter serves app_requests_total for every pod, each growing 10/s.
type exporter struct{ start time.Time }

func (e exporter) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	elapsed := time.Since(e.start).Seconds()
	var b strings.Builder
	b.WriteString("# TYPE app_requests_total counter\n")
	for i, p := range pods {
		v := strconv.FormatFloat(elapsed*float64(10+i%7), 'f', 3, 64)
		b.WriteString(`app_requests_total{namespace="` + namespace + `",pod="` + p + `",endpoint="/"} ` + v + "\n")
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = w.Write([]byte(b.String()))
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if !benchmarking() {
		// Only benchmarks live here; without -bench there is nothing to set up.
		return m.Run()
	}
	for i := range *podCount {
		pods = append(pods, podName(i))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: exporter{start: time.Now()}, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	dir, err := os.MkdirTemp("", "bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	var g localstack.Group
	defer func() { _ = g.StopAll(10 * time.Second) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	prom, err = localstack.StartPrometheus(ctx, &g, dir, fmt.Sprintf(`global:
  scrape_interval: 2s
scrape_configs:
- job_name: pods
  honor_labels: true
  static_configs:
  - targets: [%q]
`, ln.Addr().String()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Wait until a rate over every pod's series can be computed.
	client, err := promclient.New(promclient.Config{URL: prom.URL, Timeout: 30 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		vec, err := client.Query(ctx, `count(rate(app_requests_total{namespace="`+namespace+`"}[10s]) > 0)`)
		return err == nil && len(vec) == 1 && int(vec[0].Value) == len(pods), nil
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "Prometheus never had a rate for %d pods: %v\n", len(pods), err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "Prometheus %s holds %d pods' series\n", prom.URL, len(pods))
	return m.Run()
}

func benchmarking() bool {
	f := flag.Lookup("test.bench")
	return f != nil && f.Value.String() != ""
}

// selection returns n pods spread over all pods.
func selection(n int) []string {
	out := make([]string, 0, n)
	step := len(pods) / n
	for i := 0; i < n; i++ {
		out = append(out, pods[i*step])
	}
	return out
}

// BenchmarkPodQueryStrategy compares, for n pods selected out of all pods
// in the namespace, the two ways to fetch their values: one query that
// names the pods in a regex matcher (POST, so its size does not matter),
// and one query for the whole namespace whose result is filtered here.
// Both include decoding the reply.
func BenchmarkPodQueryStrategy(b *testing.B) {
	client, err := promclient.New(promclient.Config{URL: prom.URL, Timeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{10, 100, 1000, len(pods)} {
		if n > len(pods) {
			continue
		}
		sel := selection(n)
		want := map[string]bool{}
		for _, p := range sel {
			want[p] = true
		}
		regexExpr := `sum(rate(app_requests_total{` + promql.Join([]promql.Matcher{
			promql.Equals("namespace", namespace), promql.OneOf("pod", sel)}) + `}[10s])) by (pod)`
		nsExpr := `sum(rate(app_requests_total{namespace="` + namespace + `"}[10s])) by (pod)`

		b.Run(fmt.Sprintf("pods=%d/selected=%d/regex", len(pods), n), func(b *testing.B) {
			for b.Loop() {
				vec, err := client.Query(context.Background(), regexExpr)
				if err != nil {
					b.Fatal(err)
				}
				if got := count(vec, want); got != n {
					b.Fatalf("got %d of %d pods", got, n)
				}
			}
			b.ReportMetric(float64(len(regexExpr)), "query-bytes")
		})
		b.Run(fmt.Sprintf("pods=%d/selected=%d/namespace-filter", len(pods), n), func(b *testing.B) {
			for b.Loop() {
				vec, err := client.Query(context.Background(), nsExpr)
				if err != nil {
					b.Fatal(err)
				}
				if got := count(vec, want); got != n {
					b.Fatalf("got %d of %d pods", got, n)
				}
			}
		})
	}
}

func count(vec model.Vector, want map[string]bool) int {
	n := 0
	for _, s := range vec {
		if want[string(s.Metric["pod"])] {
			n++
		}
	}
	return n
}
