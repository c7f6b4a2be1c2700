// Package config reads the adapter's rules file into a Config: its Rule
// entries (with their ResourceMapping of labels to GroupResource, NameMapping,
// RegexFilter series filters and LabelValueReplacement) and its
// ResourceRules (a ResourceRule for cpu and one for memory).
//
// The file format is prometheus-adapter's, so an existing prometheus-adapter
// configuration can be used unchanged. It has three sections, one per
// metrics API:
//
//   - rules (custom.metrics.k8s.io): seriesQuery, seriesFilters, resources
//     (overrides, template), name (matches, as), metricsQuery and
//     labelValueReplacements;
//   - externalRules (external.metrics.k8s.io): the same fields, plus
//     resources.namespaced (default true: the HPA's namespace becomes a
//     matcher on the rule's namespace label);
//   - resourceRules (metrics.k8s.io): cpu and memory, each with
//     containerQuery, nodeQuery, resources and containerLabel, and window.
//
// Three additions are optional: resources.aggregateFromPods lets a rule
// whose series carry only pod and namespace labels serve objects that own or
// front those pods (Deployments, Services, Ingresses, ...); emptyIsZero
// answers 0 instead of no value when Prometheus has no series (scale to
// zero); backends name other stores than --prometheus-url (each a Backend,
// with its BackendTLS, BackendAuth and BasicAuth, and a BackendTenant when
// a store takes a tenant per namespace), and a rule's backend the one it
// reads.
//
// The package decodes: unknown keys are errors that name the file and line
// and suggest the known key, and Where tells the file and line of any rule's
// field for the errors of package rules, which compiles the rules and so
// validates them. It does not talk to Prometheus or to Kubernetes.
package config

import (
	_ "embed"
	"fmt"
	"os"
	"slices"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// Config is the whole rules file.
type Config struct {
	// source names the file; doc is its YAML tree, for Where.
	source string
	doc    *yaml.Node

	// Rules map Prometheus series to custom metrics. They are applied
	// independently, so they should not overlap.
	Rules []Rule `yaml:"rules"`
	// ResourceRules serve the resource metrics API (metrics.k8s.io): the
	// CPU and memory of pods and nodes.
	ResourceRules *ResourceRules `yaml:"resourceRules,omitempty"`
	// ExternalRules map Prometheus series to external metrics
	// (external.metrics.k8s.io), which name no Kubernetes object.
	ExternalRules []Rule `yaml:"externalRules,omitempty"`
	// Backends are the stores rules read besides the default one
	// (--prometheus-url and its flags): an extension to
	// prometheus-adapter's format. A rule names its store (Rule.Backend).
	Backends []Backend `yaml:"backends,omitempty"`
}

// DefaultBackend names the store of --prometheus-url and its flags, which
// a rule without a backend reads.
const DefaultBackend = "default"

// Backend is one Prometheus-compatible store (Prometheus, Thanos, Cortex,
// Mimir, VictoriaMetrics, a proxy in front of one): where it is, how the
// adapter authenticates to it, and how it asks.
type Backend struct {
	// Name is what rules call it (backend: NAME): a DNS label, not
	// "default".
	Name string `yaml:"name"`
	// URL is the base URL of its Prometheus HTTP API, e.g.
	// http://cortex.monitoring:9009/prometheus.
	URL string `yaml:"url"`
	// Verb is GET or POST (the default).
	Verb string `yaml:"verb,omitempty"`
	// Timeout bounds each query (default: --prometheus-timeout).
	Timeout model.Duration `yaml:"timeout,omitempty"`
	// MaxQueryLength is the longest query the store takes, in bytes (0:
	// no limit, the default; VictoriaMetrics' -search.maxQueryLen is 16384
	// by default). A longer query of many objects is sent in parts.
	MaxQueryLength int `yaml:"maxQueryLength,omitempty"`
	// TLS verifies the store's certificate and presents a client one.
	TLS BackendTLS `yaml:"tls,omitempty"`
	// Auth is how the adapter authenticates: one of a bearer token file,
	// basic auth, or a kubeconfig's credentials.
	Auth BackendAuth `yaml:"auth,omitempty"`
	// Headers are sent with every request (Name: value).
	Headers map[string]string `yaml:"headers,omitempty"`
	// Teams lets MetricRules name this backend (spec.backend). Their
	// queries are confined to their namespace whatever the store.
	Teams bool `yaml:"teams,omitempty"`
	// Tenant, when set, sends every query and listing as the tenant of
	// the request's namespace (a tenant per namespace).
	Tenant *BackendTenant `yaml:"tenant,omitempty"`
	// OnWarning is what to do with an answer that carries warnings or is
	// flagged partial (Thanos' and Cortex's or Mimir's partial answers,
	// VictoriaMetrics' isPartial, Prometheus' PromQL warnings): refuse
	// (the default: 503 naming the warning, as a sum over part of the
	// data under-scales) or serve. Info-level annotations are served.
	OnWarning string `yaml:"onWarning,omitempty"`
}

// BackendTenant sets a store's tenant from the request's namespace: in a
// header (Cortex's and Mimir's X-Scope-OrgID) or a query parameter
// (prom-label-proxy's enforced label), exactly one of the two.
type BackendTenant struct {
	// Header carries the tenant, e.g. X-Scope-OrgID.
	Header string `yaml:"header,omitempty"`
	// QueryParam carries it as a URL parameter, e.g. namespace for a
	// prom-label-proxy run with -label=namespace.
	QueryParam string `yaml:"queryParam,omitempty"`
	// Template renders the tenant from the namespace, with << >> as
	// delimiters: <<.Name>> (the default), <<index .Labels "KEY">>,
	// <<index .Annotations "KEY">>. What renders empty has no tenant, and
	// its requests are refused.
	Template string `yaml:"template,omitempty"`
	// MaxTenants bounds the tenants discovery lists each round (one
	// listing per tenant per seriesQuery); DefaultMaxTenants when 0.
	MaxTenants int `yaml:"maxTenants,omitempty"`
}

// DefaultMaxTenants is how many tenants of one store discovery lists per
// round unless tenant.maxTenants says otherwise.
const DefaultMaxTenants = 1000

// BackendTLS is a store's TLS settings.
type BackendTLS struct {
	CAFile             string `yaml:"caFile,omitempty"`
	CertFile           string `yaml:"certFile,omitempty"`
	KeyFile            string `yaml:"keyFile,omitempty"`
	InsecureSkipVerify bool   `yaml:"insecureSkipVerify,omitempty"`
}

// BackendAuth is how the adapter authenticates to a store: at most one of
// a token, basic auth, and a kubeconfig or the pod's service account.
type BackendAuth struct {
	// BearerTokenFile holds a token, read again on every request.
	BearerTokenFile string `yaml:"bearerTokenFile,omitempty"`
	// BasicAuth is a user and the file of its password.
	BasicAuth *BasicAuth `yaml:"basicAuth,omitempty"`
	// Kubeconfig is a kubeconfig whose credentials and TLS settings are
	// used (as --prometheus-auth-config).
	Kubeconfig string `yaml:"kubeconfig,omitempty"`
	// InCluster uses the pod's service account (as
	// --prometheus-auth-incluster).
	InCluster bool `yaml:"inCluster,omitempty"`
}

// BasicAuth is a user and the file that holds its password.
type BasicAuth struct {
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"passwordFile"`
}

// Rule describes how a set of Prometheus series becomes custom metrics:
// discovery (SeriesQuery, SeriesFilters), association (Resources), naming
// (Name) and querying (MetricsQuery).
type Rule struct {
	// SeriesQuery is a series selector for Prometheus' /api/v1/series.
	SeriesQuery string `yaml:"seriesQuery"`
	// SeriesFilters further filter the discovered series by name.
	SeriesFilters []RegexFilter `yaml:"seriesFilters,omitempty"`
	// Resources maps series labels to Kubernetes resources.
	Resources ResourceMapping `yaml:"resources"`
	// Name turns a series name into the metric name served by the API.
	Name NameMapping `yaml:"name"`
	// MetricsQuery is a Go template, with << and >> as delimiters, that
	// renders the PromQL for one request.
	MetricsQuery string `yaml:"metricsQuery"`
	// LabelValueReplacements rewrite object names before they are used as
	// label values in a query.
	LabelValueReplacements []LabelValueReplacement `yaml:"labelValueReplacements,omitempty"`
	// EmptyIsZero answers 0 when Prometheus has no series for what is
	// asked, instead of no value: an extension to prometheus-adapter's
	// format, for externalRules and for rules that serve objects in front
	// of pods (an Ingress, a Service, a namespace), whose metric goes on
	// existing when the workload is scaled to zero. Refused on rules that
	// serve pods: the HPA averages a Pods metric over them, and a made-up
	// 0 would be a wrong number.
	EmptyIsZero bool `yaml:"emptyIsZero,omitempty"`
	// Backend names the store the rule reads (Config.Backends); empty is
	// the default one.
	Backend string `yaml:"backend,omitempty"`
}

// RegexFilter keeps (Is) or drops (IsNot) series whose name matches a
// regular expression. Exactly one of the two is set.
type RegexFilter struct {
	Is    string `yaml:"is,omitempty"`
	IsNot string `yaml:"isNot,omitempty"`
}

// ResourceMapping associates series labels with Kubernetes resources.
type ResourceMapping struct {
	// Template maps label names to group-resources, e.g.
	// "kube_<<.Group>>_<<.Resource>>". .Group has dots replaced with
	// underscores and .Resource is singular.
	Template string `yaml:"template,omitempty"`
	// Overrides maps one label name to one group-resource.
	Overrides map[string]GroupResource `yaml:"overrides,omitempty"`
	// AggregateFromPods lists resources ("deployments.apps", "services",
	// "ingresses.networking.k8s.io", ...) that are served by resolving the
	// object to its pods and querying the pods' series. It is an extension
	// to prometheus-adapter's format and needs series with pod and
	// namespace labels.
	AggregateFromPods []string `yaml:"aggregateFromPods,omitempty"`
	// Namespaced applies to externalRules only. When true (the default),
	// a request's namespace becomes a matcher on the label that maps to
	// namespaces; false queries across namespaces.
	Namespaced *bool `yaml:"namespaced,omitempty"`
}

// IsNamespaced reports resources.namespaced, defaulting to true.
func (m ResourceMapping) IsNamespaced() bool { return m.Namespaced == nil || *m.Namespaced }

// GroupResource names a Kubernetes group-resource. Resource may be singular
// or plural; the adapter normalises it against the cluster's discovery.
type GroupResource struct {
	Group    string `yaml:"group,omitempty"`
	Resource string `yaml:"resource"`
}

// NameMapping turns a Prometheus series name into an API metric name.
type NameMapping struct {
	// Matches is a regular expression on the series name; empty means ".*".
	// Series whose name does not match are dropped.
	Matches string `yaml:"matches,omitempty"`
	// As is the API name, expanded with Matches' capture groups ($1, ${1}).
	// It defaults to $0 without capture groups and to $1 with one.
	As string `yaml:"as,omitempty"`
}

// LabelValueReplacement replaces Find with Replace in object names before
// they are sent to Prometheus.
type LabelValueReplacement struct {
	Find    string `yaml:"find,omitempty"`
	Replace string `yaml:"replace,omitempty"`
}

// ResourceRules describe how the CPU and memory of pods and nodes are read
// from Prometheus for the resource metrics API.
type ResourceRules struct {
	CPU    ResourceRule `yaml:"cpu"`
	Memory ResourceRule `yaml:"memory"`
	// Window is the period CPU usage is averaged over, reported with every
	// value. When unset it is the range of cpu.containerQuery ("[1m]").
	Window model.Duration `yaml:"window,omitempty"`
	// Backend names the store both queries read; empty is the default.
	Backend string `yaml:"backend,omitempty"`
}

// ResourceRule reads one resource (CPU in cores, memory in bytes).
type ResourceRule struct {
	// ContainerQuery renders the usage of the containers of the requested
	// pods, one series per container. .LabelMatchers selects the pods (and
	// their namespace), .GroupBy holds the pod, namespace and container
	// labels.
	ContainerQuery string `yaml:"containerQuery"`
	// NodeQuery renders the usage of the requested nodes, one series per
	// node. .GroupBy holds the node label.
	NodeQuery string `yaml:"nodeQuery"`
	// Resources maps the series' labels to pods, namespaces and nodes.
	Resources ResourceMapping `yaml:"resources"`
	// ContainerLabel is the series label holding the container name.
	ContainerLabel string `yaml:"containerLabel"`
}

//go:embed default.yaml
var defaultConfig []byte

// DefaultSource is how errors and logs name the built-in configuration.
const DefaultSource = "<built-in config>"

// DefaultYAML returns the text of the built-in configuration, which the
// adapter compiles when --config is not set: requests-per-second and
// packets-per-second, both sum(rate(app_requests_total[1m])) per object,
// for pods, namespaces and every pod owner (package podowners).
func DefaultYAML() []byte { return slices.Clone(defaultConfig) }

// Load reads and validates the rules file at path. Warnings are problems
// that do not stop the adapter, such as sections it ignores.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(data, path)
}
