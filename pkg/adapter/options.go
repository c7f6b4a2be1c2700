// Package adapter is the adapter's setup code: its flags (Options, with
// Validate), the command and its subcommands (explain, check-config, and
// ExitError for their exit codes), the components the flags build (the
// Prometheus client, the resolver, a provider per API, discovery, the
// MetricRules controller, the upstreams), and the API server around them:
// the filters that route a request to an upstream or refuse a spelling
// that would be authorized as another request (route.go), the selector
// check, the explain endpoint, readiness, and the live reload of the rules
// file.
//
// It holds no query logic: the request path is the providers'
// (custommetrics, externalmetrics, resourcemetrics) and package query's.
package adapter

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	promconfig "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/spf13/pflag"

	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/backends"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metricrules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/upstream"
)

// Options are the adapter's own flags. The API server's flags (serving,
// authentication, authorization, ...) come from custom-metrics-apiserver.
type Options struct {
	// ConfigFile is the rules file; empty means the built-in rules.
	ConfigFile string
	// WatchConfig reloads ConfigFile when it changes and on SIGHUP.
	WatchConfig bool
	// EnableExplainEndpoint serves explain.PathPrefix.
	EnableExplainEndpoint bool

	PrometheusURL              string
	PrometheusVerb             string
	PrometheusTimeout          time.Duration
	PrometheusTokenFile        string
	PrometheusCAFile           string
	PrometheusClientCertFile   string
	PrometheusClientKeyFile    string
	PrometheusInsecureSkipTLS  bool
	PrometheusHeaders          []string
	PrometheusAuthConfig       string
	PrometheusAuthInCluster    bool
	PrometheusMaxQueryLength   int
	PrometheusOnWarning        string
	MetricsRelistInterval      time.Duration
	MetricsMaxAge              time.Duration
	DiscoveryTimeout           time.Duration
	MaxConcurrentObjectQueries int
	SharedQueryMaxAge          time.Duration
	EnableCustomMetrics        bool
	EnableExternalMetrics      bool
	EnableResourceMetrics      bool
	DisableHTTP2               bool
	ShutdownDelay              time.Duration
	PrintDefaultConfig         bool
	PrintVersion               bool
	// UpstreamsFile lists other metrics servers of the same API groups
	// (package upstream); empty: none.
	UpstreamsFile             string
	UpstreamTimeout           time.Duration
	UpstreamDiscoveryInterval time.Duration
	// MetricRules serves the MetricRule objects of every namespace
	// (package metricrules), each confined to its namespace's series in
	// MetricRulesNamespaceLabel, within per-namespace limits.
	MetricRules                     bool
	MetricRulesNamespaceLabel       string
	MetricRulesPerNamespace         int
	MetricRulesMaxConcurrentQueries int
	MetricRulesQueryTimeout         time.Duration
	MetricRulesMaxSeries            int
	MetricRulesDiscoveryTimeout     time.Duration
	// LeaderElect elects the replica that writes MetricRule status.
	LeaderElect              bool
	LeaderElectNamespace     string
	LeaderElectName          string
	LeaderElectLeaseDuration time.Duration
	LeaderElectRenewDeadline time.Duration
	LeaderElectRetryPeriod   time.Duration

	// rulesData is the rules file as compiled at startup; hup receives
	// SIGHUP. Both are set by the command.
	rulesData []byte
	hup       chan os.Signal
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		PrometheusURL:              "http://prometheus.monitoring.svc:9090",
		PrometheusVerb:             http.MethodPost,
		PrometheusTimeout:          5 * time.Second,
		PrometheusOnWarning:        string(promclient.RefuseWarnings),
		MetricsRelistInterval:      time.Minute,
		DiscoveryTimeout:           30 * time.Second,
		MaxConcurrentObjectQueries: 8,
		EnableCustomMetrics:        true,
		EnableExternalMetrics:      true,
		EnableResourceMetrics:      true,
		WatchConfig:                true,
		EnableExplainEndpoint:      true,
		UpstreamTimeout:            5 * time.Second,
		UpstreamDiscoveryInterval:  time.Minute,

		MetricRulesNamespaceLabel:       "namespace",
		MetricRulesPerNamespace:         20,
		MetricRulesMaxConcurrentQueries: 4,
		MetricRulesQueryTimeout:         3 * time.Second,
		MetricRulesMaxSeries:            10000,
		MetricRulesDiscoveryTimeout:     10 * time.Second,
		LeaderElect:                     true,
		LeaderElectName:                 "custom-metrics-adapter",
		LeaderElectLeaseDuration:        15 * time.Second,
		LeaderElectRenewDeadline:        10 * time.Second,
		LeaderElectRetryPeriod:          2 * time.Second,
	}
}

// AddFlags registers the Prometheus flags on prom, the metrics APIs' flags
// on rules and the rest on general.
func (o *Options) AddFlags(prom, rules, general *pflag.FlagSet) {
	prom.StringVar(&o.PrometheusURL, "prometheus-url", o.PrometheusURL,
		"Base URL of the Prometheus HTTP API (http or https). HTTP_PROXY, HTTPS_PROXY and NO_PROXY from the environment apply.")
	prom.StringVar(&o.PrometheusVerb, "prometheus-verb", o.PrometheusVerb,
		"HTTP method for queries: POST (no size limit; needs Prometheus 2.1+) or GET (for proxies that refuse POST; queries for very many pods may exceed URL limits).")
	prom.DurationVar(&o.PrometheusTimeout, "prometheus-timeout", o.PrometheusTimeout,
		"Deadline for each call to Prometheus. A request that hits it is answered 504; the HPA retries on its next sync.")
	prom.StringVar(&o.PrometheusTokenFile, "prometheus-token-file", o.PrometheusTokenFile,
		"File holding a bearer token for Prometheus. It is read again on every request, so a rotated token is picked up.")
	prom.StringVar(&o.PrometheusCAFile, "prometheus-ca-file", o.PrometheusCAFile,
		"PEM file of CA certificates to verify Prometheus' serving certificate. Reloaded when it changes.")
	prom.StringVar(&o.PrometheusClientCertFile, "prometheus-client-tls-cert-file", o.PrometheusClientCertFile,
		"Client certificate (PEM) to present to Prometheus. Needs --prometheus-client-tls-key-file.")
	prom.StringVar(&o.PrometheusClientKeyFile, "prometheus-client-tls-key-file", o.PrometheusClientKeyFile,
		"Key (PEM) of --prometheus-client-tls-cert-file.")
	prom.BoolVar(&o.PrometheusInsecureSkipTLS, "prometheus-insecure-skip-tls-verify", o.PrometheusInsecureSkipTLS,
		"Do not verify Prometheus' serving certificate. For testing only.")
	prom.StringArrayVar(&o.PrometheusHeaders, "prometheus-header", o.PrometheusHeaders,
		"Extra HTTP header for every request to Prometheus, as Name=value (e.g. X-Scope-OrgID=team-a). Repeatable. Headers the client sets itself (Authorization: use --prometheus-token-file; Host, User-Agent, ...) are refused.")
	prom.StringVar(&o.PrometheusAuthConfig, "prometheus-auth-config", o.PrometheusAuthConfig,
		"kubeconfig whose credentials and TLS settings are used to reach Prometheus (prometheus-adapter compatible). Excludes the token, CA and client certificate flags.")
	prom.IntVar(&o.PrometheusMaxQueryLength, "prometheus-max-query-length", o.PrometheusMaxQueryLength,
		"The longest query the store takes, in bytes; 0: no limit. A query for many objects that is longer is sent in parts, each within it, "+
			"with the same values (VictoriaMetrics refuses queries over its -search.maxQueryLen, 16384 by default; with --prometheus-verb=GET, "+
			"proxies refuse URLs over about 8 KiB). A longer query that cannot be split is refused before it is sent.")
	prom.StringVar(&o.PrometheusOnWarning, "prometheus-on-warning", o.PrometheusOnWarning,
		"What to do with an answer that carries warnings or is flagged partial (Thanos' and Cortex's or Mimir's partial answers, VictoriaMetrics' isPartial, "+
			"PromQL warnings): refuse (503 naming the warning: a sum over part of the data under-scales) or serve. Info-level annotations are always served. "+
			"Either way they are counted (custom_metrics_adapter_prometheus_answer_annotations_total) and explain shows them.")
	prom.BoolVar(&o.PrometheusAuthInCluster, "prometheus-auth-incluster", o.PrometheusAuthInCluster,
		"Reach Prometheus with the pod's service account credentials (prometheus-adapter compatible). Excludes --prometheus-auth-config.")

	rules.StringVar(&o.ConfigFile, "config", o.ConfigFile,
		"Rules file in prometheus-adapter's format (rules, externalRules, resourceRules). Empty: the built-in rules (see --print-default-config): requests-per-second and packets-per-second from app_requests_total, the external metric app_requests_per_second, and CPU and memory from cAdvisor.")
	rules.BoolVar(&o.WatchConfig, "watch-config", o.WatchConfig,
		"Reload --config when it changes (its directory is watched, so a ConfigMap update is seen within a minute or so of kubectl apply) "+
			"and on SIGHUP. A file that fails validation is logged and counted in custom_metrics_adapter_config_last_reload_successful; the rules that were serving still are. "+
			"A good one re-runs discovery at once; no request fails during the switch.")
	rules.BoolVar(&o.EnableCustomMetrics, "enable-custom-metrics", o.EnableCustomMetrics,
		"Serve custom.metrics.k8s.io (v1beta1, v1beta2) from the config's rules.")
	rules.BoolVar(&o.EnableExternalMetrics, "enable-external-metrics", o.EnableExternalMetrics,
		"Serve external.metrics.k8s.io (v1beta1) from the config's externalRules. Turn it off where another adapter (KEDA) serves that API.")
	rules.BoolVar(&o.EnableResourceMetrics, "enable-resource-metrics", o.EnableResourceMetrics,
		"Serve metrics.k8s.io (v1beta1: pod and node CPU and memory, for kubectl top and Resource-metric HPAs) from the config's resourceRules. Turn it off where metrics-server serves that API.")
	rules.DurationVar(&o.MetricsRelistInterval, "metrics-relist-interval", o.MetricsRelistInterval,
		"How often to rediscover the available metrics from Prometheus.")
	rules.DurationVar(&o.MetricsMaxAge, "metrics-max-age", o.MetricsMaxAge,
		"How far back discovery looks for series. Defaults to --metrics-relist-interval; may not be shorter.")
	rules.DurationVar(&o.DiscoveryTimeout, "discovery-timeout", o.DiscoveryTimeout,
		"Deadline for one round of series listings, and so for each listing: the distinct seriesQuery selectors are listed side by side (four at a time), and one that fails keeps the series of its last good listing. Listing series is slower than a query on large Prometheus servers.")
	rules.IntVar(&o.MaxConcurrentObjectQueries, "max-concurrent-object-queries", o.MaxConcurrentObjectQueries,
		"For a label-selector request over objects served through their pods (e.g. deployments.apps/*), how many objects are queried at once.")
	rules.DurationVar(&o.SharedQueryMaxAge, "shared-query-max-age", o.SharedQueryMaxAge,
		"When positive, the requests about one custom or external metrics rule of the rules file in one namespace (every HPA of a namespace on requests-per-second; External HPAs whose selectors are one label=value each) "+
			"are answered from one query covering every object asked for recently, refreshed in the background every third of this age (an HPA syncing every 15 s reads a new answer at each sync up to 45s); no answer is older than it "+
			"(past it a request queries Prometheus itself). Only rules whose value for an object comes from that object's series alone share (checked with Prometheus' parser: "+
			"not topk, a ratio to a total, scalar()). 0 (the default): every request queries. See docs/performance.md, \"A fleet of HPAs\".")
	rules.BoolVar(&o.MetricRules, "metric-rules", o.MetricRules,
		"Serve the MetricRule objects (rules.custom-metrics-adapter.io/v1alpha1; install manifests/metric-rules) teams write in their namespaces, after the rules file's rules: "+
			"each serves its metrics in its own namespace only, and every selector of its PromQL is rewritten to read that namespace's series only. "+
			"A change takes effect without a restart; each object's status says what the adapter made of it. See docs/config.md, \"Rules owned by the team\".")
	rules.StringVar(&o.MetricRulesNamespaceLabel, "metric-rules-namespace-label", o.MetricRulesNamespaceLabel,
		"The series label that holds the namespace (as Prometheus' Kubernetes service discovery relabelling writes it): every selector of a MetricRule's queries is confined to its namespace on this label.")
	rules.IntVar(&o.MetricRulesPerNamespace, "metric-rules-per-namespace", o.MetricRulesPerNamespace,
		"How many MetricRules of one namespace are served, the oldest first; the others say OverLimit in their status. 0: no limit.")
	rules.IntVar(&o.MetricRulesMaxConcurrentQueries, "metric-rules-max-concurrent-queries", o.MetricRulesMaxConcurrentQueries,
		"How many queries of one namespace's MetricRules run at once; one more is answered 429 at once (the HPA asks again at its next sync). 0: no limit.")
	rules.DurationVar(&o.MetricRulesQueryTimeout, "metric-rules-query-timeout", o.MetricRulesQueryTimeout,
		"Deadline of each query of a MetricRule (504 when it is hit); the rules file's queries have --prometheus-timeout. 0: --prometheus-timeout only.")

	rules.IntVar(&o.MetricRulesMaxSeries, "metric-rules-max-series", o.MetricRulesMaxSeries,
		"How many series the listing of one namespace's MetricRules may return (their seriesQuery selectors are listed together, one listing per namespace): "+
			"a listing with more fails, and each rule's status says so (Prometheus is asked for one more than this, with its limit parameter). 0: no limit. "+
			"The rules file's listings are not bounded.")
	rules.DurationVar(&o.MetricRulesDiscoveryTimeout, "metric-rules-discovery-timeout", o.MetricRulesDiscoveryTimeout,
		"Deadline of the listings of the MetricRules' seriesQuery selectors in a discovery round. They run beside the rules file's (two at a time, "+
			"apart from its four), and a MetricRule not listed yet never holds back readiness: it answers 503 in its own namespace until it is listed.")

	rules.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect,
		"With --metric-rules: the replicas elect, through a Lease, the one that writes MetricRules' status; every replica serves the same rules, "+
			"and records a failed query as an Event on its MetricRule. false: this replica writes status (run one replica only).")
	rules.StringVar(&o.LeaderElectNamespace, "leader-elect-resource-namespace", o.LeaderElectNamespace,
		"Namespace of the election's Lease. Empty: the adapter's own (POD_NAMESPACE, or the service account's namespace in a pod), else custom-metrics.")
	rules.StringVar(&o.LeaderElectName, "leader-elect-resource-name", o.LeaderElectName, "Name of the election's Lease.")
	rules.DurationVar(&o.LeaderElectLeaseDuration, "leader-elect-lease-duration", o.LeaderElectLeaseDuration,
		"How long the other replicas wait, after the last renewal, before they take over writing status from a stopped leader.")
	rules.DurationVar(&o.LeaderElectRenewDeadline, "leader-elect-renew-deadline", o.LeaderElectRenewDeadline,
		"How long the leader tries to renew its Lease before it stops writing status; shorter than --leader-elect-lease-duration.")
	rules.DurationVar(&o.LeaderElectRetryPeriod, "leader-elect-retry-period", o.LeaderElectRetryPeriod,
		"How often the replicas try to take or renew the Lease.")

	general.BoolVar(&o.DisableHTTP2, "disable-http2", false,
		"Serve HTTP/1.1 only (prometheus-adapter's flag; the same as --disable-http2-serving).")
	general.DurationVar(&o.ShutdownDelay, "shutdown-delay-duration", 0,
		"On SIGTERM, keep serving this long while /readyz fails, so the APIService's endpoints drop this replica before it "+
			"stops listening; then finish the requests in flight. Behind a Service with more than one replica, set it to "+
			"a few seconds (the manifests use 5s): with 0 a rollout fails the HPA syncs routed to a replica that has just stopped.")
	general.BoolVar(&o.EnableExplainEndpoint, "enable-explain-endpoint", o.EnableExplainEndpoint,
		"Serve /debug/explain/<API path>: for a metrics request, the rule that serves it, the objects it resolved, the PromQL, "+
			"Prometheus' raw answer and the answer with its HTTP code (what `adapter explain` prints). Behind authentication and "+
			"authorization: callers need get on that non-resource URL (system:masters has it).")
	general.StringVar(&o.UpstreamsFile, "upstreams", o.UpstreamsFile,
		"YAML file of other metrics servers of the same API groups (prometheus-adapter, KEDA, metrics-server: each with its name, groups, "+
			"url or service, caFile, and the forwarding certificate clientCertFile/clientKeyFile). A request for a metric this adapter's rules do not "+
			"serve in the request's namespace goes to the first upstream whose discovery lists it, as the aggregator sends requests: with the "+
			"forwarding certificate (from a CA of its own, which the upstream trusts as its requestheader client CA) and the caller in X-Remote-User and "+
			"X-Remote-Group. No token or impersonation is sent. Their discovery is merged with this adapter's. See docs/install.md, \"Share the APIService\".")
	general.DurationVar(&o.UpstreamTimeout, "upstream-timeout", o.UpstreamTimeout,
		"Deadline of a request forwarded to an upstream, and of a read of its discovery. A request that hits it is answered 504 naming the upstream.")
	general.DurationVar(&o.UpstreamDiscoveryInterval, "upstream-discovery-interval", o.UpstreamDiscoveryInterval,
		"How often the upstreams' discovery is read again. A read that fails keeps the last good one.")
	general.BoolVar(&o.PrintDefaultConfig, "print-default-config", false, "Print the built-in rules file and exit.")
	general.BoolVar(&o.PrintVersion, "version", false, "Print the version and exit.")
}

// Validate reports every problem with the options.
func (o *Options) Validate() []error {
	var errs []error
	if u, err := url.Parse(o.PrometheusURL); err != nil {
		errs = append(errs, fmt.Errorf("--prometheus-url %q: %w", o.PrometheusURL, err))
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("--prometheus-url %q must be an absolute http or https URL", u.Redacted()))
	}
	if o.ShutdownDelay < 0 {
		errs = append(errs, fmt.Errorf("--shutdown-delay-duration must not be negative, got %s", o.ShutdownDelay))
	}
	switch strings.ToUpper(o.PrometheusVerb) {
	case http.MethodGet, http.MethodPost:
	default:
		errs = append(errs, fmt.Errorf("--prometheus-verb must be GET or POST, got %q", o.PrometheusVerb))
	}
	if o.MetricRulesPerNamespace < 0 || o.MetricRulesMaxConcurrentQueries < 0 || o.MetricRulesQueryTimeout < 0 || o.MetricRulesMaxSeries < 0 {
		errs = append(errs, fmt.Errorf("--metric-rules-per-namespace, --metric-rules-max-concurrent-queries, --metric-rules-query-timeout and --metric-rules-max-series must not be negative"))
	}
	if o.MetricRules && o.LeaderElect && (o.LeaderElectRetryPeriod <= 0 || o.LeaderElectRenewDeadline <= o.LeaderElectRetryPeriod ||
		o.LeaderElectLeaseDuration <= o.LeaderElectRenewDeadline) {
		errs = append(errs, fmt.Errorf("--leader-elect-retry-period (%v) < --leader-elect-renew-deadline (%v) < --leader-elect-lease-duration (%v) must hold",
			o.LeaderElectRetryPeriod, o.LeaderElectRenewDeadline, o.LeaderElectLeaseDuration))
	}
	if o.MetricRulesDiscoveryTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--metric-rules-discovery-timeout must be positive, got %v", o.MetricRulesDiscoveryTimeout))
	}
	if o.MetricRules && !model.LegacyValidation.IsValidLabelName(o.MetricRulesNamespaceLabel) {
		errs = append(errs, fmt.Errorf("--metric-rules-namespace-label %q is not a Prometheus label name", o.MetricRulesNamespaceLabel))
	}
	if o.PrometheusMaxQueryLength < 0 {
		errs = append(errs, fmt.Errorf("--prometheus-max-query-length must not be negative, got %d", o.PrometheusMaxQueryLength))
	}
	if w := promclient.OnWarning(o.PrometheusOnWarning); w != promclient.RefuseWarnings && w != promclient.ServeWarnings {
		errs = append(errs, fmt.Errorf("--prometheus-on-warning must be %s or %s, got %q", promclient.RefuseWarnings, promclient.ServeWarnings, o.PrometheusOnWarning))
	}
	if o.PrometheusTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--prometheus-timeout must be positive, got %v", o.PrometheusTimeout))
	}
	if (o.PrometheusClientCertFile == "") != (o.PrometheusClientKeyFile == "") {
		errs = append(errs, fmt.Errorf("--prometheus-client-tls-cert-file and --prometheus-client-tls-key-file must be set together"))
	}
	if o.PrometheusAuthConfig != "" && o.PrometheusAuthInCluster {
		errs = append(errs, fmt.Errorf("--prometheus-auth-config and --prometheus-auth-incluster exclude each other"))
	}
	if (o.PrometheusAuthConfig != "" || o.PrometheusAuthInCluster) &&
		(o.PrometheusTokenFile != "" || o.PrometheusCAFile != "" || o.PrometheusClientCertFile != "" || o.PrometheusInsecureSkipTLS) {
		errs = append(errs, fmt.Errorf("--prometheus-auth-config/--prometheus-auth-incluster take credentials and TLS from the kubeconfig; do not combine them with --prometheus-token-file, --prometheus-ca-file, --prometheus-client-tls-* or --prometheus-insecure-skip-tls-verify"))
	}
	if _, err := o.prometheusHeaders(); err != nil {
		errs = append(errs, err)
	}
	if o.MetricsRelistInterval <= 0 {
		errs = append(errs, fmt.Errorf("--metrics-relist-interval must be positive, got %v", o.MetricsRelistInterval))
	}
	if o.MetricsMaxAge != 0 && o.MetricsMaxAge < o.MetricsRelistInterval {
		errs = append(errs, fmt.Errorf("--metrics-max-age (%v) must not be shorter than --metrics-relist-interval (%v), or metrics would drop out between listings", o.MetricsMaxAge, o.MetricsRelistInterval))
	}
	if o.DiscoveryTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--discovery-timeout must be positive, got %v", o.DiscoveryTimeout))
	}
	if !o.EnableCustomMetrics && !o.EnableExternalMetrics && !o.EnableResourceMetrics {
		errs = append(errs, fmt.Errorf("--enable-custom-metrics, --enable-external-metrics and --enable-resource-metrics are all false: the adapter would serve nothing"))
	}
	if o.UpstreamsFile != "" {
		if _, err := upstream.Load(o.UpstreamsFile); err != nil {
			errs = append(errs, fmt.Errorf("--upstreams: %w", err))
		}
		if o.UpstreamTimeout <= 0 || o.UpstreamDiscoveryInterval <= 0 {
			errs = append(errs, fmt.Errorf("--upstream-timeout and --upstream-discovery-interval must be positive, got %v and %v", o.UpstreamTimeout, o.UpstreamDiscoveryInterval))
		}
	}
	if o.SharedQueryMaxAge < 0 {
		errs = append(errs, fmt.Errorf("--shared-query-max-age must not be negative, got %v", o.SharedQueryMaxAge))
	}
	if o.MaxConcurrentObjectQueries < 1 {
		errs = append(errs, fmt.Errorf("--max-concurrent-object-queries must be at least 1, got %d", o.MaxConcurrentObjectQueries))
	}
	return errs
}

// leaderElection is the election of the replica that writes MetricRule
// status; nil with --leader-elect=false.
func (o *Options) leaderElection(kube kubernetes.Interface) (*metricrules.LeaderElection, error) {
	if !o.LeaderElect {
		return nil, nil
	}
	ns := o.LeaderElectNamespace
	if ns == "" {
		ns = os.Getenv("POD_NAMESPACE")
	}
	if ns == "" {
		if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
			ns = strings.TrimSpace(string(b))
		}
	}
	if ns == "" {
		ns = "custom-metrics"
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("leader election: %w", err)
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, ns, o.LeaderElectName, kube.CoreV1(), kube.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: host + "_" + string(uuid.NewUUID())})
	if err != nil {
		return nil, fmt.Errorf("leader election: %w", err)
	}
	return &metricrules.LeaderElection{Lock: lock, LeaseDuration: o.LeaderElectLeaseDuration,
		RenewDeadline: o.LeaderElectRenewDeadline, RetryPeriod: o.LeaderElectRetryPeriod}, nil
}

// Warnings names flags that are accepted but have no effect, or an
// effect the user may not expect, with this --prometheus-url.
func (o *Options) Warnings() []string {
	u, err := url.Parse(o.PrometheusURL)
	if err != nil || u.Scheme != "http" {
		return nil
	}
	var w, tls []string
	if o.PrometheusCAFile != "" {
		tls = append(tls, "--prometheus-ca-file")
	}
	if o.PrometheusClientCertFile != "" {
		tls = append(tls, "--prometheus-client-tls-cert-file")
	}
	if o.PrometheusInsecureSkipTLS {
		tls = append(tls, "--prometheus-insecure-skip-tls-verify")
	}
	if len(tls) > 0 {
		w = append(w, fmt.Sprintf("%s apply to https only: --prometheus-url %s is http, so they have no effect", strings.Join(tls, ", "), u.Redacted()))
	}
	if o.PrometheusTokenFile != "" || u.User != nil {
		w = append(w, fmt.Sprintf("credentials for Prometheus (--prometheus-token-file, or a user in the URL) go over plain http to %s", u.Host))
	}
	return w
}

// prometheusHeaders are --prometheus-header as prometheus/common's HTTP
// client configuration has them; nil for none. Headers the client sets
// itself (Authorization: use --prometheus-token-file) are refused.
func (o *Options) prometheusHeaders() (*promconfig.Headers, error) {
	if len(o.PrometheusHeaders) == 0 {
		return nil, nil
	}
	h := &promconfig.Headers{Headers: map[string]promconfig.Header{}}
	for _, raw := range o.PrometheusHeaders {
		name, value, err := parseHeader(raw)
		if err != nil {
			return nil, err
		}
		name = http.CanonicalHeaderKey(name)
		hd := h.Headers[name]
		hd.Values = append(hd.Values, value)
		h.Headers[name] = hd
	}
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("--prometheus-header: %w", err)
	}
	return h, nil
}

func parseHeader(h string) (string, string, error) {
	name, value, ok := strings.Cut(h, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return "", "", fmt.Errorf("--prometheus-header %q must be Name=value", h)
	}
	if strings.ContainsAny(name, " :\t\r\n") || strings.ContainsAny(value, "\r\n") {
		return "", "", fmt.Errorf("--prometheus-header %q is not a valid HTTP header", h)
	}
	return name, value, nil
}

// PrometheusClientConfig builds the promclient configuration of the
// default store (DefaultBackend), as every store's is built.
func (o *Options) PrometheusClientConfig() (promclient.Config, error) {
	return backends.ClientConfig(o.DefaultBackend())
}

// DefaultBackend is the store of --prometheus-url and its flags, which a
// rule without a backend reads.
func (o *Options) DefaultBackend() config.Backend {
	b := config.Backend{
		Name: config.DefaultBackend, URL: o.PrometheusURL, Verb: o.PrometheusVerb, Timeout: model.Duration(o.PrometheusTimeout),
		MaxQueryLength: o.PrometheusMaxQueryLength, OnWarning: o.PrometheusOnWarning,
		TLS: config.BackendTLS{CAFile: o.PrometheusCAFile, CertFile: o.PrometheusClientCertFile, KeyFile: o.PrometheusClientKeyFile,
			InsecureSkipVerify: o.PrometheusInsecureSkipTLS},
		Auth: config.BackendAuth{BearerTokenFile: o.PrometheusTokenFile, Kubeconfig: o.PrometheusAuthConfig, InCluster: o.PrometheusAuthInCluster},
	}
	for _, raw := range o.PrometheusHeaders {
		if name, value, err := parseHeader(raw); err == nil {
			if b.Headers == nil {
				b.Headers = map[string]string{}
			}
			b.Headers[name] = value
		}
	}
	return b
}
