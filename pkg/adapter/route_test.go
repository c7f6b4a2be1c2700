package adapter

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakemapper"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/upstream"
)

// The router serves here what the rules serve, forwards to the upstream
// what only it lists, and a whole group this adapter does not serve.
func TestRouterOursFirst(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		names := map[string][]string{
			"/apis/custom.metrics.k8s.io/v1beta2":   {"pods/requests-per-second", "pods/upstream-rps"},
			"/apis/external.metrics.k8s.io/v1beta1": {"queue_depth"},
		}[r.URL.Path]
		rl := metav1.APIResourceList{}
		for _, n := range names {
			rl.APIResources = append(rl.APIResources, metav1.APIResource{Name: n, Namespaced: true})
		}
		_ = json.NewEncoder(w).Encode(rl)
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	ups, err := upstream.New([]upstream.Spec{{Name: "pa", Groups: []string{upstream.CustomGroup, upstream.ExternalGroup}, URL: srv.URL, CAFile: ca}},
		&rest.Config{}, time.Second, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ups.Refresh(context.Background())

	set, err := rules.Parse([]byte(checkRules), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	custom := custommetrics.New(custommetrics.Config{Rules: set.Custom, Mapper: fakemapper.New(),
		Upstream: func() []metav1.APIResource { return ups.Resources(upstream.CustomGroup) }})
	custom.Update(discovery.Result{Series: map[string][]model.LabelSet{
		set.Custom[0].SeriesQuery(): {{"__name__": "app_requests_total", "namespace": "default", "pod": "a"}},
	}})
	rt := &router{c: &components{custom: custom}, ups: ups}

	for _, tc := range []struct {
		arg, want string
	}{
		{"pods/requests-per-second", ""},   // both list it: served here
		{"pod/requests-per-second", ""},    // however the request spells the resource
		{"pods/upstream-rps", "pa"},        // only the upstream lists it
		{"pods/nobody-serves-it", ""},      // nobody: answered here, 404
		{"external/queue_depth", "pa"},     // a group not served here
		{"external/anything-at-all", "pa"}, // the whole group
	} {
		req, err := explain.ParseArgs(tc.arg, "default", "", "")
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if u := rt.upstreamFor(req); u != nil {
			got = u.Name
		}
		if got != tc.want {
			t.Errorf("%s: routed to %q, want %q", tc.arg, got, tc.want)
		}
	}
	// Discovery lists ours, then the upstream's others, each once.
	var names []string
	for _, m := range custom.ListAllMetrics() {
		names = append(names, m.GroupResource.String()+"/"+m.Metric)
	}
	n := 0
	for _, name := range names {
		if name == "pods/requests-per-second" {
			n++
		}
	}
	if n != 1 || names[len(names)-1] != "pods/upstream-rps" {
		t.Errorf("ListAllMetrics = %v, want ours first and pods/requests-per-second once", names)
	}
}
