package promclient

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"strings"
	"testing"

	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// At -v=4 every query is logged, as an excerpt: a rule's query naming
// 10,000 pods is 100 KB, which would fill the adapter's log at each HPA
// sync. The line says how long the whole query was.
func TestQueryLogLineCarriesAnExcerpt(t *testing.T) {
	var buf bytes.Buffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for k, v := range map[string]string{"v": "4", "logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "FATAL"} {
		if err := fs.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	klog.SetOutput(&buf)
	t.Cleanup(func() {
		_ = fs.Set("v", "0")
		_ = fs.Set("logtostderr", "true")
		klog.SetOutput(nil)
	})

	srv, _ := fakeProm(t, 200, readReply(t, "vector.json"))
	c, err := New(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	pods := make([]string, 10000)
	for i := range pods {
		pods[i] = fmt.Sprintf("app-%05d", i)
	}
	expr := `sum(rate(app_requests_total{pod=~"` + strings.Join(pods, "|") + `"}[1m])) by (pod)`
	if _, err := c.Query(context.Background(), expr); err != nil {
		t.Fatal(err)
	}
	klog.Flush()
	var line string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, "Prometheus query done") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("no query line at -v=4 in:\n%.2000s", buf.String())
	}
	if strings.Contains(line, pods[len(pods)-1]) || len(line) > 2*promql.MaxInMessage+512 {
		t.Errorf("the log line carries the whole %d-byte query (%d bytes)", len(expr), len(line))
	}
	if !strings.Contains(line, fmt.Sprintf("(%d bytes)", len(expr))) {
		t.Errorf("the log line does not say the query's length: %.400s", line)
	}
}
