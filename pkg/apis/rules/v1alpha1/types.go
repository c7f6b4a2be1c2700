package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MetricRule is one rule of the custom or the external metrics API, owned
// by its namespace: the adapter serves its metrics to requests in this
// namespace only, and every PromQL selector of its seriesQuery and
// metricsQuery is rewritten to read this namespace's series only, whatever
// it says.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mrule,categories=metrics
// +kubebuilder:printcolumn:name="API",type=string,JSONPath=`.spec.api`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Serving",type=string,JSONPath=`.status.conditions[?(@.type=="Serving")].status`
// +kubebuilder:printcolumn:name="Series",type=integer,JSONPath=`.status.series`
// +kubebuilder:printcolumn:name="Metrics",type=string,JSONPath=`.status.metrics`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MetricRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec MetricRuleSpec `json:"spec"`
	// +optional
	Status MetricRuleStatus `json:"status,omitempty"`
}

// MetricRuleList is a list of MetricRules.
//
// +kubebuilder:object:root=true
type MetricRuleList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MetricRule `json:"items"`
}

// API is the metrics API a rule serves.
//
// +kubebuilder:validation:Enum=Custom;External
type API string

const (
	// Custom is custom.metrics.k8s.io: metrics of objects (Pods and Object
	// HPA metrics).
	Custom API = "Custom"
	// External is external.metrics.k8s.io: metrics of no object (External
	// HPA metrics).
	External API = "External"
)

// MetricRuleSpec is a rule as the rules file's rules (Custom) or
// externalRules (External) section writes it; see docs/config.md.
//
// +kubebuilder:validation:XValidation:rule="self.api != 'External' || !has(self.resources) || !has(self.resources.aggregateFromPods)",message="resources.aggregateFromPods is for Custom rules: an external metric names no object"
type MetricRuleSpec struct {
	// API is the metrics API the rule serves: Custom
	// (custom.metrics.k8s.io) or External (external.metrics.k8s.io).
	//
	// +kubebuilder:default=Custom
	// +optional
	API API `json:"api,omitempty"`
	// SeriesQuery is the series selector that discovers the rule's series
	// (Prometheus' /api/v1/series match[]). It is confined to the rule's
	// namespace: status.seriesQuery says what is listed.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	SeriesQuery string `json:"seriesQuery"`
	// SeriesFilters keep (is) or drop (isNot) discovered series by name.
	//
	// +kubebuilder:validation:MaxItems=16
	// +optional
	SeriesFilters []RegexFilter `json:"seriesFilters,omitempty"`
	// Resources map series labels to Kubernetes resources. The label that
	// holds the namespace must be the cluster's (the adapter's
	// --metric-rules-namespace-label, "namespace" by default); it is added
	// when no label maps to namespaces.
	//
	// +optional
	Resources ResourceMapping `json:"resources,omitempty"`
	// Name turns series names into metric names.
	//
	// +optional
	Name NameMapping `json:"name,omitempty"`
	// MetricsQuery is the Go template (<< >> delimiters) of the PromQL of
	// one request: .Series, .LabelMatchers, .GroupBy, .LabelValuesByName.
	// Every selector of what it renders is confined to the rule's
	// namespace.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=8192
	MetricsQuery string `json:"metricsQuery"`
	// LabelValueReplacements rewrite object names into label values.
	//
	// +kubebuilder:validation:MaxItems=16
	// +optional
	LabelValueReplacements []LabelValueReplacement `json:"labelValueReplacements,omitempty"`
	// EmptyIsZero answers 0 when Prometheus has no series, instead of no
	// value (scale to zero). Not for rules that serve pods.
	//
	// +optional
	EmptyIsZero bool `json:"emptyIsZero,omitempty"`
	// Backend names the store the rule reads: one of the rules file's
	// backends that takes MetricRules (teams: true). Empty is the default
	// store. Its queries are confined to the namespace whatever the store.
	//
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Backend string `json:"backend,omitempty"`
}

// RegexFilter keeps (is) or drops (isNot) series whose name matches a
// regular expression.
//
// +kubebuilder:validation:XValidation:rule="has(self.is) != has(self.isNot)",message="set exactly one of is and isNot"
type RegexFilter struct {
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Is string `json:"is,omitempty"`
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	IsNot string `json:"isNot,omitempty"`
}

// ResourceMapping maps series labels to Kubernetes resources.
type ResourceMapping struct {
	// Template maps label names to group-resources, e.g.
	// "kube_<<.Group>>_<<.Resource>>".
	//
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Template string `json:"template,omitempty"`
	// Overrides map one label name each to a group-resource.
	//
	// +kubebuilder:validation:MaxProperties=16
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.size() <= 128 && k.matches('^[a-zA-Z_][a-zA-Z0-9_]*$'))",message="keys are Prometheus label names"
	// +optional
	Overrides map[string]GroupResource `json:"overrides,omitempty"`
	// AggregateFromPods lists resources served through their pods
	// ("deployments.apps", "services", ...): Custom rules only.
	//
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=128
	// +optional
	AggregateFromPods []string `json:"aggregateFromPods,omitempty"`
}

// GroupResource names a group-resource; resource may be singular.
type GroupResource struct {
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Group string `json:"group,omitempty"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Resource string `json:"resource"`
}

// NameMapping turns a series name into a metric name.
type NameMapping struct {
	// Matches is a regular expression on the series name (".*" if empty).
	//
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Matches string `json:"matches,omitempty"`
	// As is the metric name, with Matches' capture groups ($1).
	//
	// +kubebuilder:validation:MaxLength=253
	// +optional
	As string `json:"as,omitempty"`
}

// LabelValueReplacement replaces Find with Replace in object names.
type LabelValueReplacement struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Find string `json:"find"`
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Replace string `json:"replace,omitempty"`
}

// Condition types of a MetricRule.
const (
	// Accepted is True when the rule compiled and was confined to its
	// namespace; False with reason Invalid (the message names the field)
	// or OverLimit (the namespace has --metric-rules-per-namespace rules
	// created before it).
	Accepted = "Accepted"
	// Serving is True when the rule serves at least one metric; False
	// with reason NoSeries, NotListed (its series could not be listed),
	// Overruled (the rules file serves its metrics, in every namespace)
	// or Conflict (an older MetricRule of the namespace serves them).
	Serving = "Serving"
)

// MetricRuleStatus is what the adapter made of the rule, as the replica
// elected to write it (--leader-elect) saw it: accepted or not, and what
// its last series listing found. Failed queries are Events on the object
// (reason QueryFailed), from the replica that ran them.
type MetricRuleStatus struct {
	// ObservedGeneration is the generation the status describes.
	//
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Accepted and Serving.
	//
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// SeriesQuery is the seriesQuery as listed: confined to the namespace.
	//
	// +optional
	SeriesQuery string `json:"seriesQuery,omitempty"`
	// Series is how many series the last listing found.
	//
	// +optional
	Series int32 `json:"series,omitempty"`
	// LastDiscoveryTime is when the series were last listed.
	//
	// +optional
	LastDiscoveryTime *metav1.Time `json:"lastDiscoveryTime,omitempty"`
	// Metrics are the metrics served, as discovery lists them
	// ("pods/requests-per-second", or the external metric's name).
	//
	// +listType=set
	// +optional
	Metrics []string `json:"metrics,omitempty"`
}

// Reasons of the Events the adapter records on a MetricRule. Every
// replica records its own (a failed query is a fact of the replica that
// ran it); the status is written by one replica, the elected leader.
const (
	// QueryFailed: a query of the rule failed (the message says how:
	// Prometheus' error, a timeout, the namespace's concurrency limit).
	QueryFailed = "QueryFailed"
)
