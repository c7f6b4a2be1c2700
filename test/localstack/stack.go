package localstack

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	cmclient "k8s.io/metrics/pkg/client/custom_metrics"
	"sigs.k8s.io/yaml"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
)

// StackOptions configure a whole local stack.
type StackOptions struct {
	ClusterOptions
	// ScrapeInterval replaces the manifests' Prometheus scrape interval.
	ScrapeInterval time.Duration
	// RelistInterval is the adapter's --metrics-relist-interval.
	RelistInterval time.Duration
	// AdapterArgs are extra adapter flags.
	AdapterArgs []string
	// AdapterEnv are extra environment variables of the adapter processes
	// (GOGC=..., GOMEMLIMIT=...).
	AdapterEnv []string
	// NoKubelet leaves pods unscheduled and not running: no process
	// kubelet, no node (for benchmarks that only need pod objects).
	NoKubelet bool
	// ExtraScrapeConfigs are added to the manifests' Prometheus scrape
	// configs.
	ExtraScrapeConfigs []map[string]any
	// NoAdapterScrape leaves out the manifests' scrape of the adapter's
	// own /metrics (AdapterScrapeJob), for benchmarks that count the
	// adapter's CPU.
	NoAdapterScrape bool
	// QueryLog, when set, is where Prometheus logs every query it runs
	// (query_log_file).
	QueryLog string
	// Upstream runs a real prometheus-adapter behind the adapter, which
	// forwards to it what its rules do not serve (--upstreams).
	Upstream bool
	// MetricRules installs the MetricRule CRD and RBAC
	// (manifests/metric-rules) and runs the adapter with --metric-rules.
	MetricRules bool
	// CortexTenants, when set, runs Cortex (bin/cortex) beside Prometheus,
	// which writes to it with one remote_write per tenant (the key), each
	// keeping the series whose namespace label matches its regular
	// expression (the value). The adapter's rules file gets a backend
	// named cortex, whose tenant is the namespace's label "tenant".
	CortexTenants map[string]string
	// ExtraRules are added to the rules file's rules (custom metrics).
	ExtraRules []map[string]any
}

// CortexBackend names the Cortex of StackOptions.CortexTenants in the
// adapter's rules file; CortexTenantLabel is the namespace label its
// tenant is read from.
const (
	CortexBackend     = "cortex"
	CortexTenantLabel = "tenant"
)

// Stack is a control plane plus the process kubelet, Prometheus and the
// adapter registered as the custom metrics APIService.
type Stack struct {
	*Cluster
	Root       string
	Kubelet    *Kubelet
	Prometheus *Prometheus
	// Cortex runs with StackOptions.CortexTenants.
	Cortex     *Cortex
	Adapter    *Process
	AdapterURL string
	// AdapterBinary is the adapter built for this stack.
	AdapterBinary string
	adapterEnv    []string
	// adapterRules and adapterArgs are the rules file and extra flags of
	// the adapter behind the APIServices, for more replicas of it.
	adapterRules string
	adapterArgs  []string

	stopKubelet context.CancelFunc
	kubeletDone chan error
	// Ingress plays the ingress controller: load goes through it.
	Ingress *IngressController
	// Upstream is the prometheus-adapter behind the adapter, with
	// StackOptions.Upstream.
	Upstream *Upstream
	// Forwarding is the adapter's forwarding certificate, its key and
	// its CA, which the upstream trusts (StackOptions.Upstream).
	Forwarding  TLSFiles
	stopIngress context.CancelFunc

	endpoints     *endpointsController
	stopEndpoints context.CancelFunc
	endpointsDone chan struct{}
	// attached is a Stack of a cluster it did not start (Attach).
	attached bool
}

// Attach is a Stack of a cluster that runs already, reached with
// kubeconfig: it starts and stops nothing. Its helpers that only talk to
// the API server (Kubectl, Render, Apply, DeployApp, HPA, WaitReady) work
// on any cluster, as the demo's driver uses them on kind.
func Attach(kubeconfig string) (*Stack, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Stack{Root: root, attached: true, Cluster: &Cluster{AdminKubeconfig: kubeconfig, Admin: cfg, Client: client, Procs: &Group{}}}, nil
}

// APIServiceNames are the APIServices the adapter backs: the custom
// metrics API from manifests/adapter, and the optional external and
// resource metrics APIs from manifests/external-metrics and
// manifests/resource-metrics.
var APIServiceNames = []string{
	"v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io",
	"v1beta1.external.metrics.k8s.io", "v1beta1.metrics.k8s.io",
}

// StartStack starts everything and waits until the custom metrics API is
// Available. On error everything started is stopped.
func StartStack(ctx context.Context, opts StackOptions) (*Stack, error) {
	if opts.ScrapeInterval == 0 {
		opts.ScrapeInterval = 2 * time.Second
	}
	if opts.RelistInterval == 0 {
		opts.RelistInterval = 10 * time.Second
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	if _, err := KubectlBinary(); err != nil {
		return nil, err
	}
	s := &Stack{Root: root}
	binDir := filepath.Join(opts.Dir, "bin")
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	fmt.Fprintln(progress, "building the adapter and the load app")
	appBin, err := Build(ctx, binDir, "./app", "app")
	if err != nil {
		return nil, err
	}
	adapterBin, err := Build(ctx, binDir, "./cmd/adapter", "adapter")
	if err != nil {
		return nil, err
	}
	// The app image's /loadgen, for load pods (the demo's, as on kind).
	loadgenBin, err := Build(ctx, binDir, "./cmd/loadgen", "loadgen")
	if err != nil {
		return nil, err
	}

	if s.Cluster, err = StartCluster(ctx, opts.ClusterOptions); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.Procs.DumpLogs(progress, 30)
			_ = s.Stop()
		}
	}()

	// Identity, RBAC and APIServices from the manifests. The adapter and
	// Prometheus run as host processes, not as the manifests' Deployments.
	if err := s.applyManifests(ctx, "manifests/adapter", keepKinds("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "APIService")); err != nil {
		return nil, err
	}
	for _, optional := range []string{"manifests/external-metrics", "manifests/resource-metrics"} {
		if err := s.applyManifests(ctx, optional, keepKinds("ClusterRole", "ClusterRoleBinding", "APIService")); err != nil {
			return nil, err
		}
	}
	if err := s.applyManifests(ctx, "manifests/prometheus", keepKinds("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")); err != nil {
		return nil, err
	}
	s.step("applied the adapter's and Prometheus' RBAC and the APIServices of the three metrics APIs from manifests/")

	if !opts.NoKubelet {
		if err := s.startKubelet(ctx, appBin, map[string]string{"/loadgen": loadgenBin}, filepath.Join(opts.Dir, "pods"), progress); err != nil {
			return nil, err
		}
		s.step("process kubelet registered node local-node")
		ictx, stop := context.WithCancel(context.Background())
		s.stopIngress = stop
		s.Ingress = &IngressController{Client: s.Client, Progress: progress}
		if err := s.Ingress.Start(ictx); err != nil {
			return nil, fmt.Errorf("starting the local ingress: %w", err)
		}
		opts.ExtraScrapeConfigs = append(opts.ExtraScrapeConfigs, map[string]any{
			"job_name":       "local-ingress",
			"static_configs": []any{map[string]any{"targets": []any{s.Ingress.MetricsAddr}}},
		})
		s.step("local ingress serving every Ingress, its request counter on %s", s.Ingress.MetricsAddr)
	}

	if len(opts.CortexTenants) > 0 {
		if s.Cortex, err = StartCortex(ctx, s.Procs, opts.Dir, "cortex"); err != nil {
			return nil, err
		}
		s.step("Cortex ready on %s (one process, a tenant per X-Scope-OrgID)", s.Cortex.URL)
	}
	promCfg, err := s.prometheusConfig(opts)
	if err != nil {
		return nil, err
	}
	if s.Prometheus, err = StartPrometheus(ctx, s.Procs, opts.Dir, promCfg); err != nil {
		return nil, err
	}
	s.step("Prometheus ready on %s, discovering pods through the API server", s.Prometheus.URL)

	s.AdapterBinary, s.adapterEnv = adapterBin, opts.AdapterEnv
	if opts.Upstream {
		file, err := s.startUpstream(ctx, opts.Dir)
		if err != nil {
			return nil, err
		}
		opts.AdapterArgs = append(opts.AdapterArgs, "--upstreams="+file, "--upstream-discovery-interval=5s")
		s.step("prometheus-adapter ready on %s, the adapter's upstream for what its rules do not serve", s.Upstream.URL)
	}
	if opts.MetricRules {
		if err := s.applyManifests(ctx, "manifests/metric-rules", keepKinds("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")); err != nil {
			return nil, err
		}
		if err := s.waitServed(ctx, v1alpha1.Resource); err != nil {
			return nil, err
		}
		opts.AdapterArgs = append(opts.AdapterArgs, "--metric-rules")
		s.step("MetricRule CRD installed; the adapter serves MetricRules (--metric-rules)")
	}
	if err := s.startAdapter(ctx, opts); err != nil {
		return nil, err
	}
	s.step("adapter ready on %s", s.AdapterURL)
	if err := s.WaitAPIServicesAvailable(ctx, time.Minute); err != nil {
		return nil, err
	}
	s.step("APIServices %s Available", strings.Join(APIServiceNames, ", "))
	ok = true
	return s, nil
}

func (s *Stack) startKubelet(ctx context.Context, appBin string, commands map[string]string, dir string, progress io.Writer) error {
	kctx, stop := context.WithCancel(context.Background())
	s.stopKubelet = stop
	s.kubeletDone = make(chan error, 1)
	s.Kubelet = &Kubelet{Client: s.Client, NodeName: "local-node", AppBinary: appBin, Commands: commands, Dir: dir, Progress: progress}
	go func() { s.kubeletDone <- s.Kubelet.Run(kctx) }()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		n, err := s.Client.CoreV1().Nodes().Get(ctx, "local-node", metav1.GetOptions{})
		return err == nil && len(n.Status.Conditions) > 0, nil
	}); err != nil {
		return fmt.Errorf("process kubelet did not register its node: %w", err)
	}
	return nil
}

// Stop stops the kubelet's pods and every server.
func (s *Stack) Stop() error {
	if s.attached {
		return nil
	}
	if s.stopIngress != nil {
		s.stopIngress()
		select {
		case <-s.Ingress.Done():
		case <-time.After(10 * time.Second):
		}
		s.stopIngress = nil
	}
	if s.stopEndpoints != nil {
		s.stopEndpoints()
		<-s.endpointsDone
		s.stopEndpoints = nil
	}
	if s.stopKubelet != nil {
		s.stopKubelet()
		var kubeletErr error
		select {
		case kubeletErr = <-s.kubeletDone:
		case <-time.After(30 * time.Second):
			kubeletErr = errors.New("the process kubelet did not stop its pods within 30s")
		}
		s.stopKubelet = nil
		if s.Cluster == nil {
			return kubeletErr
		}
		return errors.Join(kubeletErr, s.Cluster.Stop())
	}
	if s.Cluster == nil {
		return nil
	}
	return s.Cluster.Stop()
}

// Kubectl runs kubectl against the stack with the admin kubeconfig.
func (s *Stack) Kubectl(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	bin, err := KubectlBinary()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig=" + s.AdminKubeconfig}, args...)...)
	cmd.Dir = s.Root
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, filterWarnings(stderr.String()))
	}
	return out, nil
}

func filterWarnings(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" && !strings.Contains(l, "version difference") && !strings.HasPrefix(l, "Warning: ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// Render returns the documents `kubectl kustomize dir` produces.
func (s *Stack) Render(ctx context.Context, dir string) ([]*unstructured.Unstructured, error) {
	out, err := s.Kubectl(ctx, nil, "kustomize", dir)
	if err != nil {
		return nil, err
	}
	return SplitYAML(out)
}

// SplitYAML decodes a multi-document YAML stream.
func SplitYAML(data []byte) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(string(data), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			return nil, fmt.Errorf("decoding manifest: %w", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs, nil
}

// Apply applies objects with kubectl apply --server-side.
func (s *Stack) Apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	var buf bytes.Buffer
	for _, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return err
		}
		buf.WriteString("---\n")
		buf.Write(b)
	}
	_, err := s.Kubectl(ctx, buf.Bytes(), "apply", "--server-side", "--force-conflicts", "-f", "-")
	return err
}

// waitServed waits until the API server serves gvr (a CRD just created is
// served once it is Established).
func (s *Stack) waitServed(ctx context.Context, gvr schema.GroupVersionResource) error {
	dc, err := discovery.NewDiscoveryClientForConfig(s.Admin)
	if err != nil {
		return err
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		rl, err := dc.ServerResourcesForGroupVersion(gvr.GroupVersion().String())
		if err != nil {
			return false, nil
		}
		return slices.ContainsFunc(rl.APIResources, func(r metav1.APIResource) bool { return r.Name == gvr.Resource }), nil
	})
	if err != nil {
		return fmt.Errorf("%s not served: %w", gvr, err)
	}
	return nil
}

func keepKinds(kinds ...string) func(*unstructured.Unstructured) bool {
	return func(u *unstructured.Unstructured) bool {
		for _, k := range kinds {
			if u.GetKind() == k {
				return true
			}
		}
		return false
	}
}

func (s *Stack) applyManifests(ctx context.Context, dir string, keep func(*unstructured.Unstructured) bool) error {
	objs, err := s.Render(ctx, dir)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(s.PKI.Path("ca.crt"))
	if err != nil {
		return err
	}
	var kept []*unstructured.Unstructured
	for _, o := range objs {
		if !keep(o) {
			continue
		}
		if o.GetKind() == "APIService" {
			// What hack/gen-serving-cert.sh or cert-manager do in a cluster.
			if err := unstructured.SetNestedField(o.Object, base64.StdEncoding.EncodeToString(ca), "spec", "caBundle"); err != nil {
				return err
			}
		}
		kept = append(kept, o)
	}
	return s.Apply(ctx, kept)
}

// AdapterScrapeJob is the job of manifests/prometheus/prometheus.yml that
// scrapes the adapter's own /metrics.
const AdapterScrapeJob = "custom-metrics-adapter"

// prometheusConfig takes the manifests' prometheus.yml and points its pod
// discovery at the local API server, authenticated as the manifests'
// prometheus ServiceAccount.
func (s *Stack) prometheusConfig(opts StackOptions) (string, error) {
	interval := opts.ScrapeInterval
	raw, err := os.ReadFile(filepath.Join(s.Root, "manifests/prometheus/prometheus.yml"))
	if err != nil {
		return "", err
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		return "", fmt.Errorf("manifests/prometheus/prometheus.yml: %w", err)
	}
	global, _ := cfg["global"].(map[string]any)
	if global == nil {
		global = map[string]any{}
		cfg["global"] = global
	}
	global["scrape_interval"] = interval.String()
	global["evaluation_interval"] = interval.String()
	if opts.QueryLog != "" {
		global["query_log_file"] = opts.QueryLog
	}
	jobs, _ := cfg["scrape_configs"].([]any)
	n := 0
	var kept []any
	for _, j := range jobs {
		job, _ := j.(map[string]any)
		sds, _ := job["kubernetes_sd_configs"].([]any)
		if slices.ContainsFunc(sds, func(sd any) bool { m, _ := sd.(map[string]any); return m["role"] == "node" }) {
			// The process kubelet serves no /metrics/cadvisor; the local
			// stack's resource rules read the pods' process metrics.
			continue
		}
		if job["job_name"] == AdapterScrapeJob && opts.NoAdapterScrape {
			continue
		}
		if job["job_name"] == AdapterScrapeJob {
			// The adapter's serving certificate is the stack's, and
			// Prometheus authenticates with its client certificate.
			delete(job, "authorization")
			job["tls_config"] = map[string]any{
				"ca_file":     s.PKI.Path("ca.crt"),
				"server_name": AdapterServiceDNS,
				"cert_file":   s.PKI.Path("prometheus-client.crt"),
				"key_file":    s.PKI.Path("prometheus-client.key"),
			}
		}
		kept = append(kept, job)
		for _, sd := range sds {
			m, _ := sd.(map[string]any)
			m["api_server"] = s.ServerURL
			m["tls_config"] = map[string]any{
				"ca_file":   s.PKI.Path("ca.crt"),
				"cert_file": s.PKI.Path("prometheus-client.crt"),
				"key_file":  s.PKI.Path("prometheus-client.key"),
			}
			n++
		}
	}
	if n == 0 {
		return "", errors.New("manifests/prometheus/prometheus.yml has no kubernetes_sd_configs")
	}
	for _, job := range opts.ExtraScrapeConfigs {
		kept = append(kept, job)
	}
	cfg["scrape_configs"] = kept
	if s.Cortex != nil {
		var writes []any
		for _, tenant := range slices.Sorted(maps.Keys(opts.CortexTenants)) {
			writes = append(writes, map[string]any{
				"url":          s.Cortex.URL + "/api/v1/push",
				"headers":      map[string]any{"X-Scope-OrgID": tenant},
				"queue_config": map[string]any{"batch_send_deadline": "1s"},
				"write_relabel_configs": []any{map[string]any{
					"source_labels": []any{"namespace"}, "regex": opts.CortexTenants[tenant], "action": "keep",
				}},
			})
		}
		cfg["remote_write"] = writes
	}
	out, err := yaml.Marshal(cfg)
	return string(out), err
}

// LocalResourceRules is the file whose resourceRules the local stack runs
// instead of manifests/adapter/config.yaml's cAdvisor rules: it has no
// cAdvisor, and reads the pods' process metrics instead.
const LocalResourceRules = "hack/local/resource-rules.yaml"

// adapterConfig writes the rules the local stack's adapter runs:
// manifests/adapter/config.yaml with its resourceRules replaced by those
// of LocalResourceRules.
func (s *Stack) adapterConfig(dir string, extraRules []map[string]any) (string, error) {
	var cfg, local map[string]any
	for path, dst := range map[string]*map[string]any{"manifests/adapter/config.yaml": &cfg, LocalResourceRules: &local} {
		raw, err := os.ReadFile(filepath.Join(s.Root, path))
		if err != nil {
			return "", err
		}
		if err := yaml.Unmarshal(raw, dst); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
	}
	if local["resourceRules"] == nil {
		return "", fmt.Errorf("%s has no resourceRules", LocalResourceRules)
	}
	cfg["resourceRules"] = local["resourceRules"]
	if s.Cortex != nil {
		cfg["backends"] = []any{map[string]any{
			"name": CortexBackend, "url": s.Cortex.URL + "/prometheus",
			"tenant": map[string]any{"header": "X-Scope-OrgID", "template": `<<index .Labels "` + CortexTenantLabel + `">>`},
		}}
	}
	for _, r := range extraRules {
		rs, _ := cfg["rules"].([]any)
		cfg["rules"] = append(rs, r)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	header := "# Generated by the local stack: manifests/adapter/config.yaml with the resourceRules of " + LocalResourceRules + ".\n"
	cm := filepath.Join(dir, "adapter-config")
	if err := os.MkdirAll(cm, 0o755); err != nil {
		return "", err
	}
	return filepath.Join(cm, "config.yaml"), writeConfigMapFile(cm, "config.yaml", append([]byte(header), out...))
}

// writeConfigMapFile writes name into dir the way the kubelet updates a
// ConfigMap volume: the content goes into a new ..<timestamp> directory,
// a ..data symlink to it is swapped in with a rename, name points at
// ..data/name, and the previous directory is removed.
func writeConfigMapFile(dir, name string, content []byte) error {
	version := fmt.Sprintf("..%s", time.Now().UTC().Format("2006_01_02_15_04_05.000000000"))
	if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, version, name), content, 0o644); err != nil {
		return err
	}
	data := filepath.Join(dir, "..data")
	old, _ := os.Readlink(data)
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, data); err != nil {
		return err
	}
	link := filepath.Join(dir, name)
	if _, err := os.Lstat(link); os.IsNotExist(err) {
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return err
		}
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

// AdapterRules is the path of the rules file the stack's adapters read. It
// is laid out like a ConfigMap volume; UpdateAdapterRules changes it the
// way a ConfigMap update does.
func (s *Stack) AdapterRules() string { return s.adapterRules }

// UpdateAdapterRules replaces the adapters' rules file as the kubelet
// updates a ConfigMap volume (a symlink swap). Adapters watching it reload.
func (s *Stack) UpdateAdapterRules(content []byte) error {
	return writeConfigMapFile(filepath.Dir(s.adapterRules), filepath.Base(s.adapterRules), content)
}

// AdapterConnectionArgs are the flags that point an adapter command
// (explain, check-config) at the stack: its kubeconfig, Prometheus and
// rules file.
func (s *Stack) AdapterConnectionArgs() []string {
	return []string{
		"--lister-kubeconfig=" + filepath.Join(s.Dir, "adapter.kubeconfig"),
		"--prometheus-url=" + s.Prometheus.URL,
		"--config=" + s.adapterRules,
	}
}

// AdapterProcess is an adapter process of the stack.
type AdapterProcess struct {
	*Process
	// URL is its https base URL on 127.0.0.1, Port its port.
	URL  string
	Port int
}

// RunAdapter starts one more adapter process named name (its log is
// name.log in the run folder) with the stack's serving certificate and the
// manifests' adapter identity, pointed at the stack's Prometheus, with the
// rules file config and extra flags, and waits until it is ready. It is
// stopped with the stack. It is not behind the APIServices: call it at its
// URL with an admin client (HTTPClient("admin")).
func (s *Stack) RunAdapter(ctx context.Context, name, config string, extra ...string) (*AdapterProcess, error) {
	kubeconfig := filepath.Join(s.Dir, "adapter.kubeconfig")
	if _, err := os.Stat(kubeconfig); err != nil {
		if err := s.WriteKubeconfig(kubeconfig, "adapter-client"); err != nil {
			return nil, err
		}
	}
	port, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	args := []string{
		"--secure-port=" + strconv.Itoa(port), "--bind-address=127.0.0.1",
		"--tls-cert-file=" + s.PKI.Path("adapter-serving.crt"), "--tls-private-key-file=" + s.PKI.Path("adapter-serving.key"),
		"--lister-kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig,
		"--prometheus-url=" + s.Prometheus.URL,
		"--config=" + config,
		"--v=2",
	}
	p, err := Start(s.Dir, name, s.AdapterBinary, append(args, extra...), s.adapterEnv...)
	if err != nil {
		return nil, err
	}
	s.Procs.Add(p)
	a := &AdapterProcess{Process: p, URL: "https://127.0.0.1:" + strconv.Itoa(port), Port: port}
	client, err := s.HTTPClient("")
	if err != nil {
		return nil, err
	}
	if err := WaitHTTP(ctx, client, a.URL+"/readyz", 60*time.Second, p); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return a, nil
}

func (s *Stack) startAdapter(ctx context.Context, opts StackOptions) error {
	configPath, err := s.adapterConfig(opts.Dir, opts.ExtraRules)
	if err != nil {
		return err
	}
	s.adapterRules = configPath
	s.adapterArgs = append([]string{"--metrics-relist-interval=" + opts.RelistInterval.String()}, opts.AdapterArgs...)
	a, err := s.RunAdapter(ctx, "adapter", s.adapterRules, s.adapterArgs...)
	if err != nil {
		return err
	}
	s.Adapter, s.AdapterURL = a.Process, a.URL

	const ns, name = "custom-metrics", "custom-metrics-apiserver"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "https", Port: 443}}},
	}
	if _, err := s.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the adapter's Service: %w", err)
	}
	readiness, err := s.HTTPClient("")
	if err != nil {
		return err
	}
	readiness.Timeout = time.Second
	s.endpoints = &endpointsController{client: s.Client, http: readiness, namespace: ns, service: name}
	if err := s.endpoints.add(ctx, a); err != nil {
		return err
	}
	ectx, stop := context.WithCancel(context.Background())
	s.stopEndpoints, s.endpointsDone = stop, make(chan struct{})
	go func() {
		defer close(s.endpointsDone)
		s.endpoints.run(ectx)
	}()
	return nil
}

// AddAdapterReplica starts one more adapter like the one behind the
// APIServices (same rules, same flags plus extra) and puts it behind them
// too: the aggregator then spreads requests over the replicas.
func (s *Stack) AddAdapterReplica(ctx context.Context, name string, extra ...string) (*AdapterProcess, error) {
	a, err := s.RunAdapter(ctx, name, s.adapterRules, append(slices.Clone(s.adapterArgs), extra...)...)
	if err != nil {
		return nil, err
	}
	return a, s.endpoints.add(ctx, a)
}

// endpointsController does, for the adapter processes, what the kubelet's
// readiness probe and the EndpointSlice controller do for pods: each
// replica has an EndpointSlice of the adapters' Service whose endpoint is
// ready while the process answers /readyz. The API server refuses
// loopback addresses in Endpoints and IP EndpointSlices; an FQDN slice
// whose address is "127.0.0.1" is accepted and dialled as is
// (--enable-aggregator-routing=true). A replica that is shutting down
// fails /readyz during its --shutdown-delay-duration and leaves the
// rotation before it stops serving.
type endpointsController struct {
	client             kubernetes.Interface
	http               *http.Client
	namespace, service string

	mu       sync.Mutex
	replicas []*endpointReplica
}

type endpointReplica struct {
	adapter *AdapterProcess
	slice   string
	ready   bool
}

func (c *endpointsController) add(ctx context.Context, a *AdapterProcess) error {
	r := &endpointReplica{adapter: a, slice: c.service + "-" + a.Name, ready: true}
	portName, portNum := "https", int32(a.Port)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: c.namespace, Name: r.slice, Labels: map[string]string{discoveryv1.LabelServiceName: c.service}},
		AddressType: discoveryv1.AddressTypeFQDN,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"127.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &r.ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &portNum}},
	}
	if _, err := c.client.DiscoveryV1().EndpointSlices(c.namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the EndpointSlice of %s: %w", a.Name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.replicas = append(c.replicas, r)
	return nil
}

// run probes every replica's /readyz five times a second and writes
// changes to its slice; a write that fails (API server down) is retried
// on the next probe.
func (c *endpointsController) run(ctx context.Context) {
	wait.UntilWithContext(ctx, c.sync, 200*time.Millisecond)
}

func (c *endpointsController) sync(ctx context.Context) {
	c.mu.Lock()
	replicas := slices.Clone(c.replicas)
	c.mu.Unlock()
	for _, r := range replicas {
		ready := c.probe(ctx, r.adapter)
		if ready == r.ready {
			continue
		}
		if err := c.setReady(ctx, r.slice, ready); err == nil {
			r.ready = ready
		}
	}
}

func (c *endpointsController) probe(ctx context.Context, a *AdapterProcess) bool {
	if exited, _ := a.Exited(); exited {
		return false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (c *endpointsController) setReady(ctx context.Context, name string, ready bool) error {
	slices := c.client.DiscoveryV1().EndpointSlices(c.namespace)
	es, err := slices.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for i := range es.Endpoints {
		es.Endpoints[i].Conditions.Ready = &ready
	}
	_, err = slices.Update(ctx, es, metav1.UpdateOptions{})
	return err
}

var apiServicesGVR = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// WaitAPIServicesAvailable waits until both custom metrics APIServices
// report Available=True.
func (s *Stack) WaitAPIServicesAvailable(ctx context.Context, timeout time.Duration) error {
	dyn, err := dynamic.NewForConfig(s.Admin)
	if err != nil {
		return err
	}
	var last string
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		for _, name := range APIServiceNames {
			u, err := dyn.Resource(apiServicesGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				last = err.Error()
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			available := false
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Available" {
					available = m["status"] == "True"
					last = fmt.Sprintf("%s: %v: %v", name, m["reason"], m["message"])
				}
			}
			if !available {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("APIServices not Available: %w (last: %s)", err, last)
	}
	return nil
}

// MetricsClient returns a custom metrics API client for the admin.
func (s *Stack) MetricsClient() cmclient.CustomMetricsClient {
	dc := discovery.NewDiscoveryClientForConfigOrDie(s.Admin)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return cmclient.NewForConfig(s.Admin, mapper, cmclient.NewAvailableAPIsGetter(dc))
}

// RenderHPA renders a kustomization that holds exactly one HPA, such as
// manifests/hpa/pods, and returns the HPA (manifests/hpa/team-rule holds
// its MetricRule too).
func (s *Stack) RenderHPA(ctx context.Context, dir string) (*autoscalingv2.HorizontalPodAutoscaler, error) {
	objs, err := s.Render(ctx, dir)
	if err != nil {
		return nil, err
	}
	var hpas []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "HorizontalPodAutoscaler" {
			hpas = append(hpas, o)
		}
	}
	if len(hpas) != 1 {
		return nil, fmt.Errorf("%s renders %d HorizontalPodAutoscalers, want one", dir, len(hpas))
	}
	hpa := &autoscalingv2.HorizontalPodAutoscaler{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(hpas[0].Object, hpa); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return hpa, nil
}
