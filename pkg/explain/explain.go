package explain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"k8s.io/metrics/pkg/apis/external_metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
)

// Providers are what a request is run against; a nil one is not served.
type Providers struct {
	Custom   provider.CustomMetricsProvider
	External provider.ExternalMetricsProvider
}

// API names the metrics API of a request.
type API string

// The APIs a request can be explained for.
const (
	Custom   API = "custom.metrics.k8s.io"
	External API = "external.metrics.k8s.io"
)

// Request is one API request to explain.
type Request struct {
	API API
	// Version is the API version asked for; empty means v1beta2 for
	// custom metrics, v1beta1 for external ones.
	Version string
	// Namespace is the request's namespace; empty for root-scoped objects
	// (nodes, namespaces).
	Namespace string
	// Resource is the custom metric's resource (pods, deployments.apps).
	Resource schema.GroupResource
	// Name is one object's name, or "*" for every object Selector
	// matches.
	Name   string
	Metric string
	// Selector is the label selector of the objects ("*" requests).
	Selector labels.Selector
	// MetricSelector is the metric label selector (the HPA's
	// metric.selector).
	MetricSelector labels.Selector
}

// Path is the request's path in its API (v1beta2 for custom metrics), as
// an HPA or `kubectl get --raw` would send it.
func (r Request) Path() string {
	q := url.Values{}
	if r.Selector != nil && !r.Selector.Empty() {
		q.Set("labelSelector", r.Selector.String())
	}
	if r.MetricSelector != nil && !r.MetricSelector.Empty() {
		q.Set("metricLabelSelector", r.MetricSelector.String())
	}
	version := r.Version
	if version == "" {
		version = "v1beta2"
		if r.API == External {
			version = "v1beta1"
		}
	}
	var p string
	switch {
	case r.API == External:
		if r.MetricSelector != nil && !r.MetricSelector.Empty() {
			q.Del("metricLabelSelector")
			q.Set("labelSelector", r.MetricSelector.String())
		}
		p = fmt.Sprintf("/apis/%s/%s/namespaces/%s/%s", External, version, r.Namespace, r.Metric)
	case r.Resource == namespaces:
		p = fmt.Sprintf("/apis/%s/%s/namespaces/%s/metrics/%s", Custom, version, r.Name, r.Metric)
	case r.Namespace == "":
		p = fmt.Sprintf("/apis/%s/%s/%s/%s/%s", Custom, version, r.Resource, r.Name, r.Metric)
	default:
		p = fmt.Sprintf("/apis/%s/%s/namespaces/%s/%s/%s/%s", Custom, version, r.Namespace, r.Resource, r.Name, r.Metric)
	}
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	return p
}

var (
	namespaces = schema.GroupResource{Resource: "namespaces"}
	nodes      = schema.GroupResource{Resource: "nodes"}
)

// ParseArgs reads the command line form of a request:
//
//	RESOURCE[.GROUP]/METRIC        every object the selector matches
//	RESOURCE[.GROUP]/NAME/METRIC   one object
//	namespaces/NAME/METRIC         a namespace's metric
//	external/METRIC                an external metric
//
// namespace is ignored for nodes and namespaces. selector and
// metricSelector are label selectors; either may be empty.
func ParseArgs(arg, namespace, selector, metricSelector string) (Request, error) {
	r := Request{Namespace: namespace, Name: "*"}
	var err error
	if r.Selector, err = labels.Parse(selector); err != nil {
		return r, fmt.Errorf("--selector %q: %w", selector, err)
	}
	if r.MetricSelector, err = labels.Parse(metricSelector); err != nil {
		return r, fmt.Errorf("--metric-selector %q: %w", metricSelector, err)
	}
	parts := strings.Split(arg, "/")
	if slices.Contains(parts, "") {
		return r, fmt.Errorf("%q: want RESOURCE/METRIC, RESOURCE/NAME/METRIC or external/METRIC", arg)
	}
	switch {
	case len(parts) == 2 && parts[0] == "external":
		r.API, r.Metric = External, parts[1]
		if !r.Selector.Empty() {
			return r, errors.New("an external metric names no objects: give its label selector with --metric-selector")
		}
		return r, nil
	case len(parts) == 2:
		r.Resource, r.Metric = schema.ParseGroupResource(parts[0]), parts[1]
	case len(parts) == 3:
		r.Resource, r.Name, r.Metric = schema.ParseGroupResource(parts[0]), parts[1], parts[2]
		if !r.Selector.Empty() {
			return r, fmt.Errorf("%q names one object: --selector selects objects, leave it out", arg)
		}
	default:
		return r, fmt.Errorf("%q: want RESOURCE/METRIC, RESOURCE/NAME/METRIC or external/METRIC", arg)
	}
	r.API = Custom
	r.Resource = normalise(r.Resource)
	if r.Resource == namespaces || r.Resource == nodes {
		r.Namespace = ""
	}
	if r.Resource == namespaces && r.Name == "*" {
		return r, errors.New("namespaces/METRIC: name the namespace (namespaces/NAME/METRIC)")
	}
	return r, nil
}

// ParsePath reads a request in its API path form, as ParseArgs' Path
// writes it (custom metrics v1beta1 or v1beta2, external metrics v1beta1),
// with its labelSelector and metricLabelSelector parameters.
func ParsePath(path string, query url.Values) (Request, error) {
	bad := fmt.Errorf("%q is not a custom or external metrics API path (e.g. /apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second)", path)
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) < 4 || parts[0] != "apis" || slices.Contains(parts, "") {
		return Request{}, bad
	}
	api, version, rest := API(parts[1]), parts[2], parts[3:]
	sel, msel := query.Get("labelSelector"), query.Get("metricLabelSelector")
	var req Request
	var err error
	switch {
	case api == External && version == "v1beta1":
		if len(rest) != 3 || rest[0] != "namespaces" {
			return Request{}, bad
		}
		req, err = ParseArgs("external/"+rest[2], rest[1], "", sel)
	case api != Custom || (version != "v1beta1" && version != "v1beta2"):
		return Request{}, bad
	case len(rest) == 4 && rest[0] == "namespaces" && rest[2] == "metrics":
		req, err = ParseArgs("namespaces/"+rest[1]+"/"+rest[3], "", "", msel)
	case len(rest) == 5 && rest[0] == "namespaces":
		req, err = parseObject(rest[1], rest[2], rest[3], rest[4], sel, msel)
	case len(rest) == 3 && rest[0] != "namespaces":
		req, err = parseObject("", rest[0], rest[1], rest[2], sel, msel)
	default:
		return Request{}, bad
	}
	req.Version = version
	return req, err
}

func parseObject(namespace, resource, name, metric, sel, msel string) (Request, error) {
	if name == "*" {
		return ParseArgs(resource+"/"+metric, namespace, sel, msel)
	}
	return ParseArgs(resource+"/"+name+"/"+metric, namespace, "", msel)
}

// normalise writes the core resources' common short names and singular
// forms as the API does.
func normalise(gr schema.GroupResource) schema.GroupResource {
	if gr.Group != "" {
		return gr
	}
	switch gr.Resource {
	case "pod", "po":
		gr.Resource = "pods"
	case "namespace", "ns":
		gr.Resource = "namespaces"
	case "node", "no":
		gr.Resource = "nodes"
	case "service", "svc":
		gr.Resource = "services"
	}
	return gr
}

// Report is what Run found.
type Report struct {
	Request  Request
	Rule     string
	Series   string
	Resolved []Resolution
	Queries  []Query
	// Code is the HTTP status the API answers with; Err its error.
	Code int
	Err  error
	// Custom or External holds the values served (Code 200).
	Custom   []custom_metrics.MetricValue
	External []external_metrics.ExternalMetricValue
	// At is when the answer came: the age of samples is told from it.
	At time.Time
}

// Run serves req through the providers, recording what they do.
func Run(ctx context.Context, p Providers, req Request) *Report {
	t := &Trace{}
	ctx = WithTrace(ctx, t)
	rep := &Report{Request: req}
	var err error
	switch {
	case req.API == External && p.External == nil:
		err = notServed(External, "--enable-external-metrics=false")
	case req.API == External:
		var list *external_metrics.ExternalMetricValueList
		list, err = p.External.GetExternalMetric(ctx, req.Namespace, req.MetricSelector, provider.ExternalMetricInfo{Metric: req.Metric})
		if err == nil {
			rep.External = list.Items
		}
	case p.Custom == nil:
		err = notServed(Custom, "--enable-custom-metrics=false")
	case req.Name == "*":
		info := provider.CustomMetricInfo{GroupResource: req.Resource, Namespaced: req.Namespace != "", Metric: req.Metric}
		var list *custom_metrics.MetricValueList
		list, err = p.Custom.GetMetricBySelector(ctx, req.Namespace, req.Selector, info, req.MetricSelector)
		if err == nil {
			rep.Custom = list.Items
		}
	default:
		info := provider.CustomMetricInfo{GroupResource: req.Resource, Namespaced: req.Namespace != "", Metric: req.Metric}
		var v *custom_metrics.MetricValue
		v, err = p.Custom.GetMetricByName(ctx, types.NamespacedName{Namespace: req.Namespace, Name: req.Name}, info, req.MetricSelector)
		if err == nil {
			rep.Custom = []custom_metrics.MetricValue{*v}
		}
	}
	rep.At = time.Now()
	rep.Rule, rep.Series, rep.Resolved, rep.Queries = t.snapshot()
	rep.Code = http.StatusOK
	if err != nil {
		// What the API server writes for this error.
		rep.Code, rep.Err = int(responsewriters.ErrorToAPIStatus(err).Code), err
	}
	return rep
}

// notServed is the 404 the API server answers for an API it does not
// serve.
func notServed(api API, why string) error {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status:  metav1.StatusFailure,
		Code:    http.StatusNotFound,
		Reason:  metav1.StatusReasonNotFound,
		Message: fmt.Sprintf("%s is not served (%s)", api, why),
	}}
}

// maxListed caps the names and series a report prints.
const maxListed = 50

// Write prints the report for a person.
func (r *Report) Write(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("Request:  GET %s\n", r.Request.Path())
	if r.Rule != "" {
		ew.printf("Rule:     %s (series %s)\n", r.Rule, r.Series)
	} else if r.Code == http.StatusNotFound {
		ew.printf("Rule:     none serves this metric\n")
	} else {
		ew.printf("Rule:     none chosen: the request failed first (see the answer)\n")
	}
	for _, res := range r.Resolved {
		ew.printf("Resolved: %d %s\n", len(res.Names), res.What)
		ew.printf("%s", list("          ", res.Names))
	}
	for i, q := range r.Queries {
		ew.printf("Query %d:  %s, %s\n", i+1, q.Rule, q.Duration.Round(time.Microsecond))
		ew.printf("          %s\n", q.Expr)
		switch {
		case q.Err != nil:
			ew.printf("  Prometheus answered: error: %v\n", q.Err)
		case len(q.Vector) == 0:
			ew.printf("  Prometheus answered: no series (no data for these objects)\n")
		default:
			ew.printf("  Prometheus answered: %d series\n", len(q.Vector))
			for j, s := range q.Vector {
				if j == maxListed {
					ew.printf("    ... and %d more\n", len(q.Vector)-maxListed)
					break
				}
				ew.printf("    %s %s at %s (%s old)\n", s.Metric, s.Value, s.Timestamp.Time().UTC().Format(time.RFC3339Nano),
					age(r.At, s.Timestamp))
			}
		}
	}
	if r.Err != nil {
		ew.printf("Answer:   HTTP %d %s: %v\n", r.Code, http.StatusText(r.Code), r.Err)
		return ew.err
	}
	n := len(r.Custom) + len(r.External)
	ew.printf("Answer:   HTTP %d %s, %d values\n", r.Code, http.StatusText(r.Code), n)
	for i, v := range r.Custom {
		if i == maxListed {
			ew.printf("    ... and %d more\n", n-maxListed)
			break
		}
		obj := strings.ToLower(v.DescribedObject.Kind) + "/" + v.DescribedObject.Name
		if v.DescribedObject.Namespace != "" {
			obj = v.DescribedObject.Namespace + "/" + obj
		}
		ew.printf("    %s %s = %s at %s%s\n", obj, v.Metric.Name, v.Value.String(), v.Timestamp.UTC().Format(time.RFC3339), window(v.WindowSeconds))
	}
	for i, v := range r.External {
		if i == maxListed {
			ew.printf("    ... and %d more\n", n-maxListed)
			break
		}
		ew.printf("    %s{%s} = %s at %s%s\n", v.MetricName, labels.Set(v.MetricLabels), v.Value.String(), v.Timestamp.UTC().Format(time.RFC3339), window(v.WindowSeconds))
	}
	return ew.err
}

func list(indent string, names []string) string {
	if len(names) == 0 {
		return ""
	}
	shown := names
	more := ""
	if len(shown) > maxListed {
		shown, more = shown[:maxListed], fmt.Sprintf(" ... and %d more", len(names)-maxListed)
	}
	return indent + strings.Join(shown, ", ") + more + "\n"
}

func age(now time.Time, ts model.Time) time.Duration {
	return now.Sub(ts.Time()).Round(time.Millisecond)
}

func window(s *int64) string {
	if s == nil {
		return ""
	}
	return fmt.Sprintf(" (window %ds)", *s)
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}

// PathPrefix is where Handler serves.
const PathPrefix = "/debug/explain/"

// Handler serves the report of the request whose API path follows
// PathPrefix, as text: GET /debug/explain/apis/custom.metrics.k8s.io/...
// It answers 200 with the report whatever the request's own code (the
// report names it), and 400 when the path is not a metrics request.
func Handler(p Providers) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "only GET", http.StatusMethodNotAllowed)
			return
		}
		req, err := ParsePath(strings.TrimPrefix(r.URL.Path, strings.TrimSuffix(PathPrefix, "/")), r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rep := Run(r.Context(), p, req)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Explained-Status", fmt.Sprint(rep.Code))
		_ = rep.Write(w)
	})
}
