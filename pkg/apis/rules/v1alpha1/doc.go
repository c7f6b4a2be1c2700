// Package v1alpha1 is the MetricRule API (rules.custom-metrics-adapter.io):
// one rule of the custom or external metrics API, as the rules file writes
// it, owned by a namespace. The adapter serves a MetricRule's metrics in its
// namespace only, from that namespace's series only, and reports in its
// MetricRuleStatus whether it was accepted and what it discovered; a failed
// query is an Event on it (QueryFailed).
//
// A MetricRuleSpec is a rule: its seriesQuery, RegexFilter series filters,
// ResourceMapping of labels to a GroupResource, NameMapping,
// metricsQuery and LabelValueReplacement list. A MetricRuleList lists them.
//
// The CRD (manifests/metric-rules) and zz_generated.deepcopy.go are
// generated from these types by controller-gen (make generate).
//
// +kubebuilder:object:generate=true
// +groupName=rules.custom-metrics-adapter.io
package v1alpha1
