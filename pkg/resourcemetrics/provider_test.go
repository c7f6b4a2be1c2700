package resourcemetrics

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/metrics/pkg/apis/metrics"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakeprom"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// The built-in (cAdvisor) resource rules.
const (
	podCPU = `sum by (namespace,pod,container) (rate(container_cpu_usage_seconds_total{container!="",container!="POD",namespace="default",pod=~"app-a|app-b"}[1m]))`
	podMem = `sum by (namespace,pod,container) (container_memory_working_set_bytes{container!="",container!="POD",namespace="default",pod=~"app-a|app-b"})`
)

// fakeObjects plays the informer caches.
type fakeObjects struct {
	objs map[resolver.Watch][]*metav1.PartialObjectMetadata
	err  error
}

func (f *fakeObjects) Metadata(_ context.Context, w resolver.Watch, namespace string, sel labels.Selector) ([]*metav1.PartialObjectMetadata, error) {
	if f.err != nil {
		return nil, f.err
	}
	var out []*metav1.PartialObjectMetadata
	for _, o := range f.objs[w] {
		if (namespace == "" || o.Namespace == namespace) && sel.Matches(labels.Set(o.Labels)) {
			out = append(out, o)
		}
	}
	return out, nil
}

func (f *fakeObjects) GetMetadata(_ context.Context, w resolver.Watch, namespace, name string) (*metav1.PartialObjectMetadata, error) {
	for _, o := range f.objs[w] {
		if o.Namespace == namespace && o.Name == name {
			return o, nil
		}
	}
	return nil, apierrors.NewNotFound(w.GVR.GroupResource(), name)
}

func meta(namespace, name string, lbls map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: lbls}}
}

type fixture struct {
	prom  *fakeprom.Server
	pods  *podStorage
	nodes *nodeStorage
}

func newFixture(t *testing.T, withRules bool) *fixture {
	t.Helper()
	fp := fakeprom.NewInMemory(t, nil)
	client, err := promclient.New(promclient.Config{URL: fp.URL, RoundTripper: fp.Transport(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var rr *rules.ResourceRules
	if withRules {
		cfg, err := config.Parse(config.DefaultYAML(), config.DefaultSource)
		if err != nil {
			t.Fatal(err)
		}
		set, err := rules.CompileSet(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rr = set.Resource
	}
	objs := &fakeObjects{objs: map[resolver.Watch][]*metav1.PartialObjectMetadata{
		// The running pods only, as metrics-server serves: a Pending pod
		// is in no other list the storage could ask for.
		resolver.RunningPods: {
			meta("default", "app-a", map[string]string{"app": "app"}),
			meta("default", "app-b", map[string]string{"app": "app"}),
			meta("default", "db-0", map[string]string{"app": "db"}),
			meta("other", "app-a", map[string]string{"app": "app"}),
		},
		resolver.Nodes: {meta("", "node-1", nil), meta("", "node-2", nil)},
	}}
	// fixed date: the fake clock the provider reads; nothing reads the real one.
	p := New(Config{Rules: rr, Querier: client, Objects: objs, Clock: clocktesting.NewFakeClock(time.Unix(1_700_000_100, 0))})
	return &fixture{prom: fp, pods: &podStorage{p: p}, nodes: &nodeStorage{p: p}}
}

func container(ns, pod, c, v string) fakeprom.Sample {
	return fakeprom.Sample{Labels: map[string]string{"namespace": ns, "pod": pod, "container": c}, Value: v, TS: 1_700_000_000}
}

func nsCtx(ns string) context.Context {
	return genericapirequest.WithNamespace(context.Background(), ns)
}

func listOpts(t *testing.T, sel, fieldSel string) *metainternalversion.ListOptions {
	t.Helper()
	ls, err := labels.Parse(sel)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := fields.ParseSelector(fieldSel)
	if err != nil {
		t.Fatal(err)
	}
	return &metainternalversion.ListOptions{LabelSelector: ls, FieldSelector: fs}
}

// describe renders pod metrics as "ns/pod c1=cpu,mem c2=cpu,mem @ts/window".
func describe(items []metrics.PodMetrics) []string {
	var out []string
	for _, pm := range items {
		s := pm.Namespace + "/" + pm.Name
		for _, c := range pm.Containers {
			cpu, mem := c.Usage["cpu"], c.Usage["memory"]
			s += fmt.Sprintf(" %s=%s,%s", c.Name, cpu.String(), mem.String())
		}
		out = append(out, fmt.Sprintf("%s @%d/%s", s, pm.Timestamp.Unix(), pm.Window.Duration))
	}
	return out
}

func TestListPodMetrics(t *testing.T) {
	f := newFixture(t, true)
	f.prom.Vecs[podCPU] = []fakeprom.Sample{
		container("default", "app-a", "app", "0.25"),
		container("default", "app-a", "sidecar", "0.001"),
		container("default", "app-b", "app", "1.5"),
		// Not a container: cAdvisor's pod-level cgroup.
		{Labels: map[string]string{"namespace": "default", "pod": "app-b"}, Value: "9", TS: 1_700_000_000},
	}
	f.prom.Vecs[podMem] = []fakeprom.Sample{
		container("default", "app-a", "app", "104857600"),
		container("default", "app-a", "sidecar", "1048576"),
		{Labels: map[string]string{"namespace": "default", "pod": "app-b", "container": "app"}, Value: "2097152", TS: 1_699_999_990},
	}
	obj, err := f.pods.List(nsCtx("default"), listOpts(t, "app=app", ""))
	if err != nil {
		t.Fatal(err)
	}
	list := obj.(*metrics.PodMetricsList)
	want := []string{
		"default/app-a app=250m,100Mi sidecar=1m,1Mi @1700000000/1m0s",
		"default/app-b app=1500m,2Mi @1699999990/1m0s",
	}
	if d := cmp.Diff(want, describe(list.Items)); d != "" {
		t.Errorf("PodMetrics (-want +got):\n%s", d)
	}
	if got := list.Items[0].Labels["app"]; got != "app" {
		t.Errorf("labels = %v, want the pod's", list.Items[0].Labels)
	}
	if d := cmp.Diff(sorted([]string{podCPU, podMem}), sorted(f.prom.Received())); d != "" {
		t.Errorf("queries (-want +got):\n%s", d)
	}
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}

func TestPodsWithIncompleteDataAreLeftOut(t *testing.T) {
	f := newFixture(t, true)
	f.prom.Vecs[podCPU] = []fakeprom.Sample{
		container("default", "app-a", "app", "0.25"),
		container("default", "app-a", "sidecar", "0.1"), // no memory for the sidecar
		container("default", "app-b", "app", "NaN"),
	}
	f.prom.Vecs[podMem] = []fakeprom.Sample{
		container("default", "app-a", "app", "1000"),
		container("default", "app-b", "app", "1000"),
	}
	obj, err := f.pods.List(nsCtx("default"), listOpts(t, "app=app", ""))
	if err != nil {
		t.Fatal(err)
	}
	if items := obj.(*metrics.PodMetricsList).Items; len(items) != 0 {
		t.Errorf("served %v; want pods with a container lacking memory or with a NaN left out", describe(items))
	}
}

func TestGetPodMetrics(t *testing.T) {
	f := newFixture(t, true)
	one := `sum by (namespace,pod,container) (rate(container_cpu_usage_seconds_total{container!="",container!="POD",namespace="default",pod="app-a"}[1m]))`
	oneMem := `sum by (namespace,pod,container) (container_memory_working_set_bytes{container!="",container!="POD",namespace="default",pod="app-a"})`
	f.prom.Vecs[one] = []fakeprom.Sample{container("default", "app-a", "app", "0.5")}
	f.prom.Vecs[oneMem] = []fakeprom.Sample{container("default", "app-a", "app", "1024")}
	obj, err := f.pods.Get(nsCtx("default"), "app-a", &metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"default/app-a app=500m,1Ki @1700000000/1m0s"}, describe([]metrics.PodMetrics{*obj.(*metrics.PodMetrics)})); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}

	_, err = f.pods.Get(nsCtx("default"), "nope", &metav1.GetOptions{})
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("missing pod: %v, want 404", err)
	}
	_, err = f.pods.Get(nsCtx("default"), "db-0", &metav1.GetOptions{})
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "no complete CPU and memory data") {
		t.Errorf("pod without data: %v, want 404 saying why", err)
	}
}

func TestListAllNamespacesAndFieldSelectors(t *testing.T) {
	f := newFixture(t, true)
	obj, err := f.pods.List(nsCtx(""), listOpts(t, "", "metadata.name=app-a"))
	if err != nil {
		t.Fatal(err)
	}
	if items := obj.(*metrics.PodMetricsList).Items; len(items) != 0 {
		t.Errorf("items = %v", describe(items))
	}
	want := `sum by (namespace,pod,container) (rate(container_cpu_usage_seconds_total{container!="",container!="POD",namespace=~"default|other",pod="app-a"}[1m]))`
	if got := f.prom.Received(); !slices.Contains(got, want) {
		t.Errorf("queries = %v, want one for app-a in both namespaces: %s", got, want)
	}

	_, err = f.pods.List(nsCtx("default"), listOpts(t, "", "spec.nodeName=node-1"))
	if !apierrors.IsBadRequest(err) {
		t.Errorf("unsupported field selector: %v, want 400", err)
	}
}

func TestNodeMetrics(t *testing.T) {
	f := newFixture(t, true)
	cpu := `sum by (node) (rate(container_cpu_usage_seconds_total{id="/",node=~"node-1|node-2"}[1m]))`
	mem := `sum by (node) (container_memory_working_set_bytes{id="/",node=~"node-1|node-2"})`
	f.prom.Vecs[cpu] = []fakeprom.Sample{
		{Labels: map[string]string{"node": "node-1"}, Value: "1.25", TS: 1_700_000_000},
		{Labels: map[string]string{"node": "node-2"}, Value: "0.5", TS: 1_700_000_000},
	}
	f.prom.Vecs[mem] = []fakeprom.Sample{{Labels: map[string]string{"node": "node-1"}, Value: "4294967296", TS: 1_700_000_001}}
	obj, err := f.nodes.List(context.Background(), listOpts(t, "", ""))
	if err != nil {
		t.Fatal(err)
	}
	items := obj.(*metrics.NodeMetricsList).Items
	if len(items) != 1 {
		t.Fatalf("items = %+v, want node-1 only (node-2 has no memory)", items)
	}
	n := items[0]
	cq, mq := n.Usage["cpu"], n.Usage["memory"]
	if n.Name != "node-1" || cq.String() != "1250m" || mq.String() != "4Gi" || n.Timestamp.Unix() != 1_700_000_000 || n.Window.Duration != time.Minute {
		t.Errorf("node metrics = %s cpu=%s memory=%s @%d/%s", n.Name, cq.String(), mq.String(), n.Timestamp.Unix(), n.Window.Duration)
	}
	table, err := f.nodes.ConvertToTable(context.Background(), obj, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(table.Rows) != 1 || table.Rows[0].Cells[0] != "node-1" || table.Rows[0].Cells[1] != "1250m" {
		t.Errorf("table rows = %+v", table.Rows)
	}
}

func TestResourceMetricsErrors(t *testing.T) {
	f := newFixture(t, false)
	_, err := f.pods.List(nsCtx("default"), listOpts(t, "", ""))
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "no resourceRules") {
		t.Errorf("without resourceRules: %v, want 503 saying so", err)
	}

	f = newFixture(t, true)
	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "unavailable", http.StatusBadGateway)
		return true
	})
	_, err = f.pods.List(nsCtx("default"), listOpts(t, "app=app", ""))
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "the cpu of pods") && !strings.Contains(err.Error(), "the memory of pods") {
		t.Errorf("Prometheus failing: %v, want 503 naming what failed", err)
	}
	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, `{"status":"error","errorType":"bad_data","error":"parse error"}`, http.StatusBadRequest)
		return true
	})
	_, err = f.nodes.List(context.Background(), listOpts(t, "", ""))
	if !apierrors.IsInternalError(err) || !strings.Contains(err.Error(), "resourceRules.") {
		t.Errorf("a query Prometheus rejects: %v, want 500 naming the rule", err)
	}
}
