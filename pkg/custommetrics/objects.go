package custommetrics

import (
	"context"
	"fmt"
	"math"

	"github.com/prometheus/common/model"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/values"
)

// queryObjects serves objects whose series carry a label with their name.
// It returns values for the requested objects that have data, in the order
// of names. A sample is mapped back to an object by the label values of
// the names asked for (labelValueReplacements are not undone: that could
// name an object that was never asked for). Several series for one object
// (a query that keeps labels it does not group by) are added up, as the
// rule's own sum would.
func (p *Provider) queryObjects(ctx context.Context, r *request, namespace string, names []string) ([]custom_metrics.MetricValue, error) {
	labelValues, byValue := r.Rule.LabelValues(names)
	// Grouped by the objects' label, the answer for many objects is that
	// of their parts: a store with a tenant per namespace gets one query
	// per tenant, one with a query length limit queries that fit
	// (query.RunMany).
	many := func(values []string) query.Many {
		return query.Many{N: len(values), Query: func(ids []int) query.Query {
			var matchers []promql.Matcher
			if r.Value.namespaced {
				matchers = append(matchers, promql.Equals(r.Value.namespaceLabel, r.Rule.ToLabelValue(namespace)))
			}
			matchers = append(matchers, promql.OneOf(r.Value.label, query.Pick(values, ids)))
			matchers = append(matchers, r.matchers...)
			return r.query(matchers, []string{r.Value.label}).In(namespace)
		}}
	}
	m := many(labelValues)
	if r.info.GroupResource == rules.Namespaces {
		// Each namespace is read as its own tenant.
		m.NamespaceOf = func(i int) string { return names[i] }
	}
	q := m.Query(nil)
	res, err := p.run(ctx, r, namespace, m, many, labelValues)
	if err != nil {
		return nil, err
	}
	type total struct {
		sum    float64
		ts     model.Time
		series int
	}
	totals := make([]total, len(names))
	for _, s := range res.Vector {
		v, ok := s.Metric[model.LabelName(r.Value.label)]
		if !ok {
			continue
		}
		i, asked := byValue[string(v)]
		switch {
		case !asked:
			continue // a series of an object nobody asked for
		case i < 0:
			klog.V(2).InfoS("Dropping a sample whose label value several requested objects share (labelValueReplacements)",
				"rule", r.Rule.String(), "label", r.Value.label, "value", string(v))
			continue
		}
		t := &totals[i]
		t.sum += float64(s.Value)
		t.ts = max(t.ts, s.Timestamp)
		t.series++
	}
	window := r.Rule.WindowSeconds()
	out := make([]custom_metrics.MetricValue, 0, len(names))
	zeroed := 0
	for i, n := range names {
		t := totals[i]
		if t.series == 0 {
			if q.EmptyIsZero {
				// No series for an object in front of the pods (an
				// Ingress at zero replicas): the rule says that is 0.
				out = append(out, r.value(namespace, n, model.TimeFromUnixNano(p.clock.Now().UnixNano()), window, resource.Quantity{}))
				zeroed++
			}
			continue
		}
		if t.series > 1 {
			klog.V(2).InfoS("Query returned several series for an object; serving their sum", "rule", r.Rule.String(), "object", n, "series", t.series)
		}
		v, ok := values.Quantity(t.sum)
		if !ok {
			klog.V(2).InfoS("Dropping a value that is not a finite number", "rule", r.Rule.String(), "object", n, "value", t.sum)
			continue
		}
		out = append(out, r.value(namespace, n, t.ts, window, v))
	}
	query.Zeroed(ctx, q, zeroed)
	return out, nil
}

// run runs m, a query about the objects whose label has one of values:
// from the query shared by the requests about the same rule, namespace and
// metric selector when queries are shared and the rule can share, else
// alone. many builds the query for other values. A team's rule, whose
// queries its namespace's budget bounds, and the namespaces resource (a
// tenant each) are not shared.
func (p *Provider) run(ctx context.Context, r *request, namespace string, m query.Many, many func([]string) query.Many, values []string) (query.Result, error) {
	if p.sharing != nil && r.Rule.Namespace() == "" && r.info.GroupResource != rules.Namespaces {
		shape := query.Shape{
			Key:   fmt.Sprintf("%p\x00%s\x00%s\x00%s\x00%s", r.Rule, r.Series, namespace, r.Value.label, promql.Join(r.matchers)),
			Rule:  r.Rule.String(),
			Label: r.Value.label,
			Query: many,
		}
		s, ok, err := p.sharing.Answer(ctx, shape, values)
		if ok || err != nil {
			return s.Result, err
		}
	}
	return query.RunMany(ctx, p.stores, m)
}

// objectViaPods serves one object by querying its pods' series, grouped by
// namespace, so the rule's own aggregation (sum, avg, max...) applies
// across the object's pods. Series the query leaves apart are added up.
func (p *Provider) objectViaPods(ctx context.Context, r *request, namespace, name string) (*custom_metrics.MetricValue, error) {
	pods, err := p.resolver.PodsFor(ctx, r.info.GroupResource, namespace, name)
	if err != nil {
		return nil, apistatus.Resolve(err, r.info.GroupResource.String())
	}
	trace.From(ctx).Resolved(fmt.Sprintf("pods of %s %s", r.info.GroupResource, klog.KRef(namespace, name)), pods)
	if len(pods) == 0 {
		klog.V(2).InfoS("Object has no pods", "resource", r.info.GroupResource.String(), "object", klog.KRef(namespace, name), "metric", r.info.Metric)
		return nil, notFoundBecause(r.info, name, "it selects no pods")
	}
	matchers := func(pods []string) []promql.Matcher {
		ms := []promql.Matcher{
			promql.Equals(r.Value.namespaceLabel, r.Rule.ToLabelValue(namespace)),
			promql.OneOf(r.Value.podLabel, pods),
		}
		return append(ms, r.matchers...)
	}
	res, aggregation, err := p.viaPods(ctx, r, namespace, podValues(r.Rule, pods), matchers)
	if err != nil {
		return nil, err
	}
	var sum float64
	var ts model.Time
	n := 0
	nsValue := model.LabelValue(r.Rule.ToLabelValue(namespace))
	for _, s := range res.Vector {
		if v, ok := s.Metric[model.LabelName(r.Value.namespaceLabel)]; ok && v != nsValue {
			// A pod of the same name in another namespace, from a
			// metricsQuery that does not match on the namespace.
			continue
		}
		v := float64(s.Value)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			// One series left out would make the sum smaller, not
			// wrong-looking: no value rather than a partial one.
			klog.V(2).InfoS("A series of the object's pods is not a finite number", "rule", r.Rule.String(), "object", klog.KRef(namespace, name), "series", s.Metric.String(), "value", s.Value)
			return nil, notFoundBecause(r.info, name, fmt.Sprintf("a series of its pods is %v", s.Value))
		}
		switch {
		case n == 0:
			sum = v
		case aggregation == "min":
			sum = min(sum, v)
		case aggregation == "max":
			sum = max(sum, v)
		default:
			sum += v
		}
		ts = max(ts, s.Timestamp)
		n++
	}
	if n == 0 {
		return nil, notFoundBecause(r.info, name, fmt.Sprintf("Prometheus has no data for its %d pods", len(pods)))
	}
	q, ok := values.Quantity(sum)
	if !ok {
		return nil, notFoundBecause(r.info, name, "the sum of its pods' values is not a finite number")
	}
	v := r.value(namespace, name, ts, r.Rule.WindowSeconds(), q)
	return &v, nil
}

// viaPods runs the query of an object's pods, whose label values are pods:
// grouped by namespace alone, or, when queries are shared and the rule can
// share, from the query of every pod asked for recently, grouped by
// namespace and pod, with the aggregation that combines a pod set's series
// (the rule's outermost: sum, min, max; count adds up). matchers are the
// query's for a set of pods.
func (p *Provider) viaPods(ctx context.Context, r *request, namespace string, pods []string, matchers func([]string) []promql.Matcher) (query.Result, string, error) {
	if p.sharing != nil && r.Rule.Namespace() == "" {
		byPod := []string{r.Value.namespaceLabel, r.Value.podLabel}
		shape := query.Shape{
			Key:   fmt.Sprintf("%p\x00%s\x00%s\x00pods\x00%s", r.Rule, r.Series, namespace, promql.Join(r.matchers)),
			Rule:  r.Rule.String(),
			Label: r.Value.podLabel,
			Query: func(values []string) query.Many {
				return query.Many{N: len(values), Query: func(ids []int) query.Query {
					return r.query(matchers(query.Pick(values, ids)), byPod).In(namespace)
				}}
			},
			Combined: true,
		}
		s, ok, err := p.sharing.Answer(ctx, shape, pods)
		if ok || err != nil {
			return s.Result, s.Aggregation, err
		}
	}
	res, err := query.Run(ctx, p.stores, r.query(matchers(pods), []string{r.Value.namespaceLabel}).In(namespace))
	return res, "", err
}

// query is the request's query for matchers, grouped by groupBy.
func (r *request) query(matchers []promql.Matcher, groupBy []string) query.Query {
	return query.Of(metrics.CustomAPI, r.Rule, r.Series, matchers, groupBy, r.budgets, func() string { return what(r.info) })
}

// value is the answer for one object.
func (r *request) value(namespace, name string, ts model.Time, window *int64, q resource.Quantity) custom_metrics.MetricValue {
	if r.info.GroupResource == rules.Namespaces {
		namespace = ""
	}
	return custom_metrics.MetricValue{
		DescribedObject: custom_metrics.ObjectReference{
			Kind:       r.kind,
			APIVersion: r.apiVersion,
			Namespace:  namespace,
			Name:       name,
		},
		Metric:        custom_metrics.MetricIdentifier{Name: r.info.Metric, Selector: r.selector},
		Timestamp:     metav1.NewTime(ts.Time()),
		WindowSeconds: window,
		Value:         q,
	}
}

// echo turns the request's metric selector back into the API form each
// value carries (nil for none), with metav1.ParseToLabelSelector, which has
// no "!=": a != requirement is echoed as the notin of its one value, which
// selects the same.
func echo(sel labels.Selector) (*metav1.LabelSelector, error) {
	if sel == nil || sel.Empty() {
		return nil, nil
	}
	reqs, _ := sel.Requirements()
	out := labels.NewSelector()
	for _, r := range reqs {
		if r.Operator() == selection.NotEquals {
			notIn, err := labels.NewRequirement(r.Key(), selection.NotIn, r.ValuesUnsorted())
			if err != nil {
				return nil, err
			}
			r = *notIn
		}
		out = out.Add(r)
	}
	return metav1.ParseToLabelSelector(out.String())
}

// podValues applies the rule's labelValueReplacements to pod names.
func podValues(r *rules.Rule, pods []string) []string {
	out := make([]string, len(pods))
	for i, n := range pods {
		out[i] = r.ToLabelValue(n)
	}
	return out
}

// notFoundBecause is a 404 naming the metric, the object and why.
func notFoundBecause(info provider.CustomMetricInfo, name, why string) error {
	return apistatus.NotFound(provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name), why)
}
