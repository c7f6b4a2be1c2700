package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// hostile are MetricRules whose templates are code, written by a user who
// may edit one namespace: a loop of ten million, one that prints inside a
// loop of a hundred million, a format that pads to 100 MB, a template
// that calls itself.
var hostile = map[string]string{
	"loop":      `<<range 10000000>><<end>>up`,
	"huge":      `<<range 100000000>>` + strings.Repeat("x", 1000) + `<<end>>up`,
	"printf":    `<<printf "%0100000000d" 1>>`,
	"recursion": `<<define "a">><<template "a" .>><<end>><<template "a" .>>`,
}

// TestHostileTeamRules: a namespace editor's MetricRules whose templates
// are code are refused in their status, with a short message, without a
// pause in the adapter; the same namespace's good rule serves, and the
// other teams' HPAs (the tests running beside this one) keep scaling.
func TestHostileTeamRules(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	const team, dev = "team-c", "team-c-dev"
	if err := stack.DeployApp(ctx, team); err != nil {
		t.Fatal(err)
	}
	devRules := editor(ctx, t, team, dev)
	admin := dynamic.NewForConfigOrDie(stack.Admin).Resource(v1alpha1.Resource)

	good := v1alpha1.MetricRuleSpec{
		API: v1alpha1.Custom, SeriesQuery: `app_requests_total{pod!=""}`,
		Resources: v1alpha1.ResourceMapping{Overrides: map[string]v1alpha1.GroupResource{
			"namespace": {Resource: "namespace"}, "pod": {Resource: "pod"},
		}},
		Name:         v1alpha1.NameMapping{Matches: "^app_requests_total$", As: "team-c-requests-per-second"},
		MetricsQuery: `sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)`,
	}
	// The editor's RBAC reaches MetricRules once the edit role has
	// aggregated them (seconds).
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := devRules.Namespace(team).List(ctx, metav1.ListOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("%s cannot list MetricRules in %s", dev, team)
	}
	start := time.Now()
	for name, tmpl := range hostile {
		spec := good
		spec.Name.As = name
		spec.MetricsQuery = tmpl
		createRule(ctx, t, devRules, team, name, spec)
	}
	createRule(ctx, t, devRules, team, "good", good)

	for name := range hostile {
		var c *metav1.Condition
		if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
			st, current := status(ctx, admin.Namespace(team), name)
			c = condition(st, v1alpha1.Accepted)
			return current && c != nil, nil
		}); err != nil {
			t.Fatalf("MetricRule %s/%s has no Accepted condition", team, name)
		}
		if c.Status != metav1.ConditionFalse || c.Reason != "Invalid" || !strings.Contains(c.Message, "spec.metricsQuery") ||
			!strings.Contains(c.Message, "placeholders only") || len(c.Message) > 1100 {
			t.Errorf("MetricRule %s/%s: Accepted %s %s (%d bytes): %.300s", team, name, c.Status, c.Reason, len(c.Message), c.Message)
		}
	}
	t.Logf("the four hostile MetricRules were refused in their status %v after they were created", time.Since(start).Round(time.Second))
	waitServing(ctx, t, admin.Namespace(team), "good")

	// The good rule serves beside them, and the adapter took no time
	// over them: no compile hit its deadline.
	_, stop := startLoad(t, team, loadPath, 10)
	var v float64
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		v, lastErr = podsSum(ctx, team, "team-c-requests-per-second")
		return lastErr == nil && v > 5, nil
	}); err != nil {
		t.Errorf("the good rule of %s: %.1f, %v; want about 10", team, v, lastErr)
	}
	stop()
	mfs, err := adapterMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := localstack.Sum(mfs, "custom_metrics_adapter_metric_rules_compile_timeouts_total", map[string]string{"namespace": team}); ok && n > 0 {
		t.Errorf("%v MetricRules of %s hit the compile deadline", n, team)
	}
	if n, ok := localstack.Sum(mfs, "custom_metrics_adapter_metric_rules_rules", map[string]string{"state": "invalid"}); !ok || n < float64(len(hostile)) {
		t.Errorf("MetricRules counted invalid: %v, want at least %d", n, len(hostile))
	}
}

// hostileUpstream is an upstream that records what it receives, as one
// run by someone who would replay it: it takes only clients with a
// certificate of the forwarding CA, as a real upstream does, and lists
// one metric.
type hostileUpstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	got  []http.Header
	peer []*x509.Certificate
}

func newHostileUpstream(t *testing.T) *hostileUpstream {
	t.Helper()
	h := &hostileUpstream{}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(stack.Forwarding.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	h.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.got = append(h.got, r.Header.Clone())
		h.peer = append(h.peer, r.TLS.PeerCertificates...)
		h.mu.Unlock()
		if r.URL.Path == "/apis/custom.metrics.k8s.io/v1beta2" {
			_ = json.NewEncoder(w).Encode(metav1.APIResourceList{GroupVersion: "custom.metrics.k8s.io/v1beta2",
				APIResources: []metav1.APIResource{{Name: "pods/hostile-metric", Namespaced: true, Kind: "MetricValueList"}}})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":[]}`)
	}))
	h.srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12}
	h.srv.StartTLS()
	t.Cleanup(h.srv.Close)
	return h
}

// TestForwardedRequestsCarryNoCredential: what an upstream receives from
// the adapter works nowhere else. A hostile upstream records a forwarded
// request: no token, no impersonation, the caller in X-Remote-* headers
// over a client certificate it cannot replay (the key never leaves the
// adapter). Replayed against the real kube-apiserver, the headers
// authenticate as nobody, and so does the forwarding certificate with its
// key (what the adapter holds): the API server does not trust its CA.
func TestForwardedRequestsCarryNoCredential(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	h := newHostileUpstream(t)
	dir := t.TempDir()
	ca := filepath.Join(dir, "hostile-ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: h.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "upstreams.yaml")
	text := fmt.Sprintf("upstreams:\n- name: hostile\n  groups: [custom.metrics.k8s.io]\n  url: %s\n  caFile: %s\n  clientCertFile: %s\n  clientKeyFile: %s\n",
		h.srv.URL, ca, stack.Forwarding.ClientCert, stack.Forwarding.ClientKey)
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	a := runAdapter(ctx, t, "adapter-hostile-upstream", stack.AdapterRules(), "--upstreams="+file, "--upstream-discovery-interval=1s")

	path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/hostile-metric"
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		code, _, err := stack.Get(ctx, "admin", a.URL+path, nil)
		if err != nil {
			return false, nil
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		return code == http.StatusOK && len(h.got) > 0 && h.got[len(h.got)-1].Get("X-Remote-User") == "kubernetes-admin", nil
	}); err != nil {
		t.Fatalf("the adapter did not forward %s to the hostile upstream", path)
	}
	h.mu.Lock()
	received := h.got[len(h.got)-1]
	peer := h.peer[len(h.peer)-1]
	h.mu.Unlock()
	for name := range received {
		if c := http.CanonicalHeaderKey(name); c == "Authorization" || c == "Cookie" || strings.HasPrefix(c, "Impersonate-") {
			t.Errorf("the upstream received %s: %q", name, received[name])
		}
	}
	if groups := received.Values("X-Remote-Group"); len(groups) == 0 || peer.Subject.CommonName != localstack.ForwardingUser {
		t.Errorf("the upstream received groups %q over a certificate of %q, want the caller's groups over the forwarding certificate", groups, peer.Subject.CommonName)
	}

	// Replay: the headers it received, sent to the API server as they
	// are (all it holds); then with the forwarding certificate and key.
	replay := func(cert *tls.Certificate) (int, string) {
		caPEM, err := os.ReadFile(stack.PKI.Path("ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		body := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, stack.ServerURL+"/apis/authentication.k8s.io/v1/selfsubjectreviews", strings.NewReader(body))
		for name, vs := range received {
			for _, v := range vs {
				req.Header.Add(name, v)
			}
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	// Authenticated as nobody: 401, or (the API server's default
	// --anonymous-auth=true) the 403 of system:anonymous. A replay that
	// authenticated would create the review (201) naming the user.
	nobody := func(code int, out string) bool {
		return code == http.StatusUnauthorized || (code == http.StatusForbidden && strings.Contains(out, `User \"system:anonymous\"`))
	}
	code, out := replay(nil)
	t.Logf("the received headers replayed to the API server: %d %.200s", code, out)
	if !nobody(code, out) {
		t.Errorf("the received headers replayed to the API server: %d %s, want 401 or the anonymous user's 403", code, out)
	}
	cert, err := tls.LoadX509KeyPair(stack.Forwarding.ClientCert, stack.Forwarding.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	code, out = replay(&cert)
	t.Logf("with the forwarding certificate and its key: %d %.200s", code, out)
	if !nobody(code, out) {
		t.Errorf("the forwarding certificate and its key, with the received headers, at the API server: %d %s, want 401 or the anonymous user's 403", code, out)
	}
}

// TestUpstreamMetricsStayTheUpstreams: a team's MetricRules named like
// the upstream's metrics (a Pods metric with series in the team's
// namespace, an external one with emptyIsZero and none) serve the team's
// namespace only; every other namespace's requests for those names still
// reach the upstream.
func TestUpstreamMetricsStayTheUpstreams(t *testing.T) {
	t.Parallel()
	ensureApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const squatter = "squatter"
	if err := stack.DeployApp(ctx, squatter); err != nil {
		t.Fatal(err)
	}
	admin := dynamic.NewForConfigOrDie(stack.Admin).Resource(v1alpha1.Resource)
	createRule(ctx, t, admin, squatter, "pods", v1alpha1.MetricRuleSpec{
		API: v1alpha1.Custom, SeriesQuery: `app_requests_total{pod!=""}`,
		Resources: v1alpha1.ResourceMapping{Overrides: map[string]v1alpha1.GroupResource{
			"namespace": {Resource: "namespace"}, "pod": {Resource: "pod"},
		}},
		Name:         v1alpha1.NameMapping{Matches: "^app_requests_total$", As: "upstream-requests-per-second"},
		MetricsQuery: `sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)`,
	})
	createRule(ctx, t, admin, squatter, "external", v1alpha1.MetricRuleSpec{
		API: v1alpha1.External, SeriesQuery: `nothing_here_total`, EmptyIsZero: true,
		Name:         v1alpha1.NameMapping{As: "upstream_requests_per_second"},
		MetricsQuery: `sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]))`,
	})
	waitServing(ctx, t, admin.Namespace(squatter), "pods")
	waitServing(ctx, t, admin.Namespace(squatter), "external")

	// Under load in default, its requests for the two names get the
	// upstream's values; the squatter's namespace gets its own rules'.
	_, stop := startLoad(t, ns, loadPath, 20)
	defer stop()
	var custom, external float64
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if custom, lastErr = podsSum(ctx, ns, "upstream-requests-per-second"); lastErr != nil {
			return false, nil
		}
		if external, lastErr = externalSum(ctx, ns, "upstream_requests_per_second"); lastErr != nil {
			return false, nil
		}
		return custom > 10 && external > 10, nil
	}); err != nil {
		t.Fatalf("in %s, beside the squatter's rules: upstream-requests-per-second %.1f, upstream_requests_per_second %.1f (%v); want the upstream's, near 20",
			ns, custom, external, lastErr)
	}
	if code, body := rawGet(ctx, "/apis/external.metrics.k8s.io/v1beta1/namespaces/"+squatter+"/upstream_requests_per_second"); code != http.StatusOK ||
		!strings.Contains(body, `"value":"0"`) {
		t.Errorf("the squatter's own external metric: %d %s, want its emptyIsZero 0", code, body)
	}
}

// TestOneReplicaWritesMetricRuleStatus: with a second replica serving the
// same MetricRules, one replica (the elected leader, the stack's first)
// writes their status and the other writes none.
func TestOneReplicaWritesMetricRuleStatus(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	second := runAdapter(ctx, t, "adapter-second-writer", stack.AdapterRules(), "--metric-rules")
	// A rule created once both replicas serve MetricRules.
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		mfs, err := stack.Metrics(ctx, second.URL)
		if err != nil {
			return false, nil
		}
		_, ok := localstack.Sum(mfs, "custom_metrics_adapter_metric_rules_rules", map[string]string{"state": "accepted"})
		return ok, nil
	}); err != nil {
		t.Fatal("the second replica does not serve MetricRules")
	}
	const team = "status-writer"
	if _, err := stack.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: team}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	admin := dynamic.NewForConfigOrDie(stack.Admin).Resource(v1alpha1.Resource)
	createRule(ctx, t, admin, team, "queue", v1alpha1.MetricRuleSpec{
		API: v1alpha1.External, SeriesQuery: `queue_depth`, EmptyIsZero: true,
		Name: v1alpha1.NameMapping{As: "queue_depth"}, MetricsQuery: `sum(<<.Series>>{<<.LabelMatchers>>})`,
	})
	waitServing(ctx, t, admin.Namespace(team), "queue")

	writes := func(url string) (leader, ok float64) {
		mfs, err := stack.Metrics(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		leader, _ = localstack.Sum(mfs, "custom_metrics_adapter_metric_rules_status_writer", nil)
		ok, _ = localstack.Sum(mfs, "custom_metrics_adapter_metric_rules_status_writes_total", map[string]string{"result": "ok"})
		return leader, ok
	}
	firstLeads, firstWrites := writes(stack.AdapterURL)
	secondLeads, secondWrites := writes(second.URL)
	t.Logf("status writes: first replica %v (writer %v), second %v (writer %v)", firstWrites, firstLeads, secondWrites, secondLeads)
	if firstLeads+secondLeads != 1 || (firstLeads == 1) != (firstWrites > 0) || (secondLeads == 1) != (secondWrites > 0) {
		t.Errorf("status writers: first replica %v with %v writes, second %v with %v: want exactly one writer, and only it writing",
			firstLeads, firstWrites, secondLeads, secondWrites)
	}
	lease, err := stack.Client.CoordinationV1().Leases("custom-metrics").Get(ctx, "custom-metrics-adapter", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Errorf("the election's Lease: %v, %v", lease, err)
	}
}
