package adapter

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/upstream"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// The router serves here what the rules serve in the request's namespace,
// forwards to the upstream what only it lists (and a whole group this
// adapter does not serve), and refuses the spellings that would be
// authorized as one request and served as another; nothing it does not
// parse as a metrics request is forwarded.
func TestRouterOursFirst(t *testing.T) {
	files, err := localstack.GenerateTLSFiles(t.TempDir(), "forwarding")
	if err != nil {
		t.Fatal(err)
	}
	tlsFiles, err := files.ServerTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		names, discovery := map[string][]string{
			"/apis/custom.metrics.k8s.io/v1beta2":   {"pods/requests-per-second", "pods/upstream-rps", "pods/team-rps", "namespaces/team-rps"},
			"/apis/external.metrics.k8s.io/v1beta1": {"queue_depth"},
		}[r.URL.Path]
		if !discovery {
			_, _ = io.WriteString(w, "upstream:"+r.URL.Path)
			return
		}
		rl := metav1.APIResourceList{}
		for _, n := range names {
			rl.APIResources = append(rl.APIResources, metav1.APIResource{Name: n, Namespaced: true})
		}
		_ = json.NewEncoder(w).Encode(rl)
	}))
	srv.TLS = tlsFiles
	srv.StartTLS()
	defer srv.Close()
	ups, err := upstream.New([]upstream.Spec{{Name: "pa", Groups: []string{upstream.CustomGroup, upstream.ExternalGroup}, URL: srv.URL,
		CAFile: files.CA, ClientCertFile: files.ClientCert, ClientKeyFile: files.ClientKey}}, 5*time.Second, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ups.Refresh(context.Background())

	set, err := rules.Parse([]byte(checkRules), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// team-b's MetricRule names a metric the upstream serves too.
	team, err := rules.CompileTeam(rules.TeamRule{Namespace: "team-b", Name: "steal", Rule: config.Rule{
		SeriesQuery: `app_requests_total`, Name: config.NameMapping{As: "team-rps"},
		Resources:    config.ResourceMapping{Overrides: map[string]config.GroupResource{"namespace": {Resource: "namespace"}, "pod": {Resource: "pod"}}},
		MetricsQuery: `sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)`,
	}}, "namespace")
	if err != nil {
		t.Fatal(err)
	}
	custom := custommetrics.New(custommetrics.Config{Rules: append(set.Custom, team), Mapper: rules.BuiltinMapper(),
		Upstream: func() []metav1.APIResource { return ups.Resources(upstream.CustomGroup) }})
	custom.Update(discovery.Result{Series: map[string][]model.LabelSet{
		set.Custom[0].SeriesQuery(): {{"__name__": "app_requests_total", "namespace": "default", "pod": "a"}},
		team.SeriesQuery():          {{"__name__": "app_requests_total", "namespace": "team-b", "pod": "a"}},
	}})
	rt := &router{c: &components{custom: custom}, ups: ups}
	here := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := withRequestInfo(rt.handler(here))

	const cm = "/apis/custom.metrics.k8s.io/v1beta2"
	for _, tc := range []struct {
		name, method, path string
		// want is "here", "refused" or the path the upstream got.
		want string
	}{
		{"both list it: served here", "GET", cm + "/namespaces/default/pods/*/requests-per-second", "here"},
		{"only the upstream lists it", "GET", cm + "/namespaces/default/pods/*/upstream-rps", "upstream:" + cm + "/namespaces/default/pods/*/upstream-rps"},
		{"one object", "GET", cm + "/namespaces/default/pods/web-1/upstream-rps", "upstream:" + cm + "/namespaces/default/pods/web-1/upstream-rps"},
		{"nobody serves it: answered here", "GET", cm + "/namespaces/default/pods/*/nobody-serves-it", "here"},
		{"another namespace's rule does not take the upstream's metric", "GET", cm + "/namespaces/team-a/pods/*/team-rps", "upstream:" + cm + "/namespaces/team-a/pods/*/team-rps"},
		{"the team's own namespace is served by its rule", "GET", cm + "/namespaces/team-b/pods/*/team-rps", "here"},
		{"a namespace's own metric, another namespace's rule: the upstream's", "GET", cm + "/namespaces/team-a/metrics/team-rps", "upstream:" + cm + "/namespaces/team-a/metrics/team-rps"},
		{"a namespace's own metric, served by the rule of the namespace named", "GET", cm + "/namespaces/team-b/metrics/team-rps", "here"},
		{"an encoded slash is forwarded as the separator it was parsed as", "GET", cm + "/namespaces/default/pods%2F%2A/upstream-rps", "upstream:" + cm + "/namespaces/default/pods/*/upstream-rps"},
		{"a group not served here", "GET", "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth", "upstream:/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth"},
		{"the whole group", "GET", "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/anything", "upstream:/apis/external.metrics.k8s.io/v1beta1/namespaces/default/anything"},
		{"discovery of a group not served here", "GET", "/apis/external.metrics.k8s.io/v1beta1", "the upstream's discovery"},
		{"a resource not in lower case", "GET", cm + "/namespaces/default/PODS/*/upstream-rps", "refused"},
		{"a namespace's metric as a cluster-scoped object", "GET", cm + "/NAMESPACES/team-b/team-rps", "refused"},
		{"a namespace's metric as a singular cluster-scoped object", "GET", cm + "/namespace/team-b/team-rps", "refused"},
		{"a path longer than a metric's", "GET", cm + "/namespaces/default/pods/*/upstream-rps/x", "here"},
		{"a dot segment", "GET", cm + "/namespaces/default/../*/upstream-rps", "here"},
		{"a write", "POST", cm + "/namespaces/default/pods/*/upstream-rps", "here"},
		{"an external path shape in the custom group", "GET", cm + "/namespaces/default/upstream-rps", "here"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, nil)
			req = req.WithContext(request.WithUser(req.Context(), &user.DefaultInfo{Name: "alice"}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			got := rec.Body.String()
			switch {
			case rec.Code == http.StatusTeapot:
				got = "here"
			case strings.Contains(got, `"queue_depth"`):
				got = "the upstream's discovery"
			case rec.Code == http.StatusNotFound && strings.Contains(got, "lower case") || strings.Contains(got, "/namespaces/NAME/metrics/METRIC"):
				got = "refused"
			}
			if got != tc.want {
				t.Errorf("%s %s: %d %q, want %q", tc.method, tc.path, rec.Code, got, tc.want)
			}
		})
	}

	// explain asks the same question of a request.
	for arg, ns := range map[string]string{"pods/team-rps": "team-a", "external/queue_depth": "default"} {
		req, err := explain.ParseArgs(arg, ns, "", "")
		if err != nil {
			t.Fatal(err)
		}
		if f := rt.Forward(context.Background(), req); f == nil || f.Code != http.StatusOK {
			t.Errorf("explain %s in %s: %+v, want the upstream's answer", arg, ns, f)
		}
	}
	req, _ := explain.ParseArgs("pods/team-rps", "team-b", "", "")
	if f := rt.Forward(context.Background(), req); f != nil {
		t.Errorf("explain pods/team-rps in team-b: forwarded to %s, want served here", f.Upstream)
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
	if n != 1 || !slices.Contains(names, "pods/upstream-rps") || names[0] == "pods/upstream-rps" {
		t.Errorf("ListAllMetrics = %v, want ours first and pods/requests-per-second once", names)
	}
}
