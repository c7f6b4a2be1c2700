// Package explain answers "why does my metric say that": it follows one
// API request through the adapter (the rule that serves it, the objects
// and pods it resolved, the PromQL it rendered, Prometheus' raw answer,
// recorded in a trace.Trace) and reports it next to what the API answers,
// with the HTTP code, or where the request was forwarded. Run drives a
// Request through the Providers (a ResourceProvider for metrics.k8s.io, a
// Forwarder for the upstreams, whose answer is a Forwarded) into a Report,
// Write prints the report, Handler serves it (/debug/explain/...)
// authorized as the request it explains, and ParseArgs and ParsePath read
// a request as `adapter explain` and the debug path write it.
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
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"k8s.io/metrics/pkg/apis/external_metrics"
	"k8s.io/metrics/pkg/apis/metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/podowners"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
)

// Providers are what a request is run against; a nil one is not served.
type Providers struct {
	Custom   provider.CustomMetricsProvider
	External provider.ExternalMetricsProvider
	Resource ResourceProvider
	// Upstreams is nil without --upstreams.
	Upstreams Forwarder
}

// Forwarder is the upstreams of the adapter (--upstreams): what its rules
// do not serve goes to them.
type Forwarder interface {
	// Forward answers req from the upstream that serves it, or returns
	// nil when the adapter serves req itself.
	Forward(ctx context.Context, req Request) *Forwarded
}

// Forwarded is a request an upstream answered.
type Forwarded struct {
	// Upstream names the upstream and where it is.
	Upstream string
	Code     int
	Body     []byte
	Err      error
}

// ResourceProvider serves the resource metrics API as its storage does:
// *resourcemetrics.Provider.
type ResourceProvider interface {
	// ListPods is the usage of the running pods of namespace ("" for all)
	// that sel matches.
	ListPods(ctx context.Context, namespace string, sel labels.Selector) ([]metrics.PodMetrics, error)
	// GetPod is the usage of one pod.
	GetPod(ctx context.Context, namespace, name string) (*metrics.PodMetrics, error)
	// ListNodes is the usage of the nodes sel matches.
	ListNodes(ctx context.Context, sel labels.Selector) ([]metrics.NodeMetrics, error)
	// GetNode is the usage of one node.
	GetNode(ctx context.Context, name string) (*metrics.NodeMetrics, error)
}

// API names the metrics API of a request.
type API string

// The APIs a request can be explained for.
const (
	Custom   API = "custom.metrics.k8s.io"
	External API = "external.metrics.k8s.io"
	Resource API = "metrics.k8s.io"
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
	// Resource is the custom metric's resource (pods, deployments.apps),
	// or the resource metrics API's (pods, nodes).
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
// an HPA, `kubectl top` or `kubectl get --raw` would send it.
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
		if r.API != Custom {
			version = "v1beta1"
		}
	}
	prefix := fmt.Sprintf("/apis/%s/%s", r.API, version)
	var p string
	switch {
	case r.API == External:
		if r.MetricSelector != nil && !r.MetricSelector.Empty() {
			q.Del("metricLabelSelector")
			q.Set("labelSelector", r.MetricSelector.String())
		}
		p = fmt.Sprintf("%s/namespaces/%s/%s", prefix, r.Namespace, r.Metric)
	case r.API == Resource:
		p = prefix + "/" + r.Resource.Resource
		if r.Namespace != "" {
			p = fmt.Sprintf("%s/namespaces/%s/%s", prefix, r.Namespace, r.Resource.Resource)
		}
		if r.Name != "*" {
			p += "/" + r.Name
		}
	case r.Resource == namespaces:
		p = fmt.Sprintf("%s/namespaces/%s/metrics/%s", prefix, r.Name, r.Metric)
	case r.Namespace == "":
		p = fmt.Sprintf("%s/%s/%s/%s", prefix, r.Resource, r.Name, r.Metric)
	default:
		p = fmt.Sprintf("%s/namespaces/%s/%s/%s/%s", prefix, r.Namespace, r.Resource, r.Name, r.Metric)
	}
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	return p
}

var (
	namespaces = schema.GroupResource{Resource: "namespaces"}
	nodes      = schema.GroupResource{Resource: "nodes"}
	pods       = schema.GroupResource{Resource: "pods"}
)

// usage is what ParseArgs and ParsePath accept.
const usage = "want RESOURCE/METRIC, RESOURCE/NAME/METRIC, external/METRIC, pods.metrics.k8s.io[/NAME] or nodes.metrics.k8s.io[/NAME]"

// ParseArgs reads the command line form of a request:
//
//	RESOURCE[.GROUP]/METRIC        every object the selector matches
//	RESOURCE[.GROUP]/NAME/METRIC   one object
//	namespaces/NAME/METRIC         a namespace's metric
//	external/METRIC                an external metric
//	pods.metrics.k8s.io[/NAME]     the CPU and memory of pods (kubectl top pod)
//	nodes.metrics.k8s.io[/NAME]    the CPU and memory of nodes (kubectl top node)
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
		return r, fmt.Errorf("%q: %s", arg, usage)
	}
	first := schema.ParseGroupResource(parts[0])
	switch {
	case first.Group == string(Resource) && len(parts) <= 2:
		return r, r.resourceMetrics(arg, first, parts[1:])
	case first.Group == string(Resource):
		return r, fmt.Errorf("%q: %s", arg, usage)
	case len(parts) == 2 && parts[0] == "external":
		r.API, r.Metric = External, parts[1]
		if !r.Selector.Empty() {
			return r, errors.New("an external metric names no objects: give its label selector with --metric-selector")
		}
		return r, nil
	case len(parts) == 2:
		r.Resource, r.Metric = first, parts[1]
	case len(parts) == 3:
		r.Resource, r.Name, r.Metric = first, parts[1], parts[2]
		if !r.Selector.Empty() {
			return r, fmt.Errorf("%q names one object: --selector selects objects, leave it out", arg)
		}
	default:
		return r, fmt.Errorf("%q: %s", arg, usage)
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

// resourceMetrics fills a request of the resource metrics API for
// gr.metrics.k8s.io and an optional name.
func (r *Request) resourceMetrics(arg string, gr schema.GroupResource, name []string) error {
	r.API, r.Resource = Resource, schema.GroupResource{Resource: normalise(schema.GroupResource{Resource: gr.Resource}).Resource}
	if r.Resource != pods && r.Resource != nodes {
		return fmt.Errorf("%q: the resource metrics API serves pods and nodes", arg)
	}
	if !r.MetricSelector.Empty() {
		return errors.New("the resource metrics API has no metric selector: leave --metric-selector out")
	}
	if r.Resource == nodes {
		r.Namespace = ""
	}
	if len(name) == 1 {
		r.Name = name[0]
		if !r.Selector.Empty() {
			return fmt.Errorf("%q names one object: --selector selects objects, leave it out", arg)
		}
	}
	return nil
}

// ParsePath reads a request in its API path form, as Path writes it
// (custom metrics v1beta1 or v1beta2, external and resource metrics
// v1beta1), with its labelSelector and metricLabelSelector parameters.
func ParsePath(path string, query url.Values) (Request, error) {
	bad := fmt.Errorf("%q is not a metrics API path (e.g. /apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second)", path)
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) < 4 || parts[0] != "apis" || slices.Contains(parts, "") {
		return Request{}, bad
	}
	api, version, rest := API(parts[1]), parts[2], parts[3:]
	sel, msel := query.Get("labelSelector"), query.Get("metricLabelSelector")
	var namespace string
	if len(rest) > 2 && rest[0] == "namespaces" && (api != Custom || rest[2] != "metrics") {
		namespace, rest = rest[1], rest[2:]
	}
	var arg string
	switch {
	case version != "v1beta1" && (api != Custom || version != "v1beta2"):
		return Request{}, bad
	case api == External && len(rest) == 1 && namespace != "":
		arg, sel, msel = "external/"+rest[0], "", sel
	case api == Resource && (len(rest) == 1 || len(rest) == 2) && (rest[0] == "pods" || rest[0] == "nodes"):
		arg = strings.Join(append([]string{rest[0] + "." + string(Resource)}, rest[1:]...), "/")
	case api == Custom && len(rest) == 4 && rest[0] == "namespaces" && rest[2] == "metrics":
		arg = "namespaces/" + rest[1] + "/" + rest[3]
	case api == Custom && len(rest) == 3 && (namespace != "" || rest[0] != "namespaces") &&
		rest[0] != "external" && schema.ParseGroupResource(rest[0]).Group != string(Resource):
		// (Not "external" nor a metrics.k8s.io resource: their text form
		// is another API's.)
		arg = rest[0] + "/" + rest[1] + "/" + rest[2]
		if rest[1] == "*" {
			arg = rest[0] + "/" + rest[2]
		} else {
			sel = ""
		}
	default:
		return Request{}, bad
	}
	req, err := ParseArgs(arg, namespace, sel, msel)
	req.Version = version
	return req, err
}

// normalise writes the core resources' common short names and singular
// forms as the API does, and the pod owners as the rules file names them
// ("deployment" and "Deployment" are deployments.apps).
func normalise(gr schema.GroupResource) schema.GroupResource {
	// Resource and group names are lower case: a request is authorized
	// as Path writes it, and must be the request that is served.
	gr = schema.GroupResource{Group: strings.ToLower(gr.Group), Resource: strings.ToLower(gr.Resource)}
	if o, ok := podowners.Lookup(gr.String()); ok {
		return o.GVR.GroupResource()
	}
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
	case "svc":
		gr.Resource = "services"
	}
	return gr
}

// Report is what Run found.
type Report struct {
	Request  Request
	Rule     string
	Series   string
	Resolved []trace.Resolution
	Queries  []trace.Query
	// NotShared says why the request's query was not shared with other
	// requests, when queries are shared (--shared-query-max-age).
	NotShared string
	// Code is the HTTP status the API answers with; Err its error.
	Code int
	Err  error
	// Custom, External, Pods or Nodes holds the values served (Code 200).
	Custom   []custom_metrics.MetricValue
	External []external_metrics.ExternalMetricValue
	Pods     []metrics.PodMetrics
	Nodes    []metrics.NodeMetrics
	// At is when the answer came: the age of samples is told from it.
	At time.Time
	// Forwarded is set when an upstream answered the request.
	Forwarded *Forwarded
}

// Run serves req through the providers, recording what they do.
func Run(ctx context.Context, p Providers, req Request) *Report {
	t := &trace.Trace{}
	ctx = trace.WithTrace(ctx, t)
	rep := &Report{Request: req}
	if p.Upstreams != nil {
		if f := p.Upstreams.Forward(ctx, req); f != nil {
			rep.Forwarded, rep.At, rep.Code, rep.Err = f, time.Now(), f.Code, f.Err
			if rep.Err == nil && f.Code != http.StatusOK {
				rep.Err = fmt.Errorf("%s", strings.TrimSpace(string(f.Body)))
			}
			return rep
		}
	}
	var err error
	switch req.API {
	case External:
		err = rep.runExternal(ctx, p.External)
	case Resource:
		err = rep.runResource(ctx, p.Resource)
	default:
		err = rep.runCustom(ctx, p.Custom)
	}
	rep.At = time.Now()
	rep.Rule, rep.Series, rep.Resolved, rep.Queries = t.Snapshot()
	rep.NotShared = t.WhyNotShared()
	rep.Code = http.StatusOK
	if err != nil {
		// What the API server writes for this error.
		rep.Code, rep.Err = int(responsewriters.ErrorToAPIStatus(err).Code), err
	}
	return rep
}

func (rep *Report) runCustom(ctx context.Context, p provider.CustomMetricsProvider) error {
	req := rep.Request
	if p == nil {
		return notServed(Custom)
	}
	info := provider.CustomMetricInfo{GroupResource: req.Resource, Namespaced: req.Namespace != "", Metric: req.Metric}
	if req.Name == "*" {
		list, err := p.GetMetricBySelector(ctx, req.Namespace, req.Selector, info, req.MetricSelector)
		if err == nil {
			rep.Custom = list.Items
		}
		return err
	}
	v, err := p.GetMetricByName(ctx, types.NamespacedName{Namespace: req.Namespace, Name: req.Name}, info, req.MetricSelector)
	if err == nil {
		rep.Custom = []custom_metrics.MetricValue{*v}
	}
	return err
}

func (rep *Report) runExternal(ctx context.Context, p provider.ExternalMetricsProvider) error {
	req := rep.Request
	if p == nil {
		return notServed(External)
	}
	list, err := p.GetExternalMetric(ctx, req.Namespace, req.MetricSelector, provider.ExternalMetricInfo{Metric: req.Metric})
	if err == nil {
		rep.External = list.Items
	}
	return err
}

func (rep *Report) runResource(ctx context.Context, p ResourceProvider) error {
	req := rep.Request
	if p == nil {
		return notServed(Resource)
	}
	var err error
	switch {
	case req.Resource == nodes && req.Name == "*":
		rep.Nodes, err = p.ListNodes(ctx, req.Selector)
	case req.Resource == nodes:
		var nm *metrics.NodeMetrics
		if nm, err = p.GetNode(ctx, req.Name); err == nil {
			rep.Nodes = []metrics.NodeMetrics{*nm}
		}
	case req.Name == "*":
		rep.Pods, err = p.ListPods(ctx, req.Namespace, req.Selector)
	default:
		var pm *metrics.PodMetrics
		if pm, err = p.GetPod(ctx, req.Namespace, req.Name); err == nil {
			rep.Pods = []metrics.PodMetrics{*pm}
		}
	}
	return err
}

// notServed is the 404 the API server answers for an API it does not
// serve.
func notServed(api API) error {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status:  metav1.StatusFailure,
		Code:    http.StatusNotFound,
		Reason:  metav1.StatusReasonNotFound,
		Message: fmt.Sprintf("%s is not served: its --enable flag is false, or the rules file has no section for it", api),
	}}
}

// maxListed caps the names and series a report prints.
const maxListed = 50

// Write prints the report for a person.
func (r *Report) Write(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("Request:  GET %s\n", r.Request.Path())
	if f := r.Forwarded; f != nil {
		ew.printf("Forwarded: to upstream %s: this adapter's rules do not serve it, the upstream lists it\n", f.Upstream)
		if r.Err != nil {
			ew.printf("Answer:   HTTP %d %s: %v\n", r.Code, http.StatusText(r.Code), r.Err)
			return ew.err
		}
		ew.printf("Answer:   HTTP %d %s (the upstream's, passed back unchanged)\n%s\n", r.Code, http.StatusText(r.Code), f.Body)
		return ew.err
	}
	if r.Rule != "" && r.Series == "" {
		ew.printf("Rule:     %s\n", r.Rule)
	} else if r.Rule != "" {
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
		store := ""
		if q.Backend != "" {
			store = ", on backend " + q.Backend
		}
		if q.Tenant != "" {
			store += ", as tenant " + q.Tenant
		}
		if q.Shared {
			ew.printf("Query %d:  %s%s, shared: its answer for every object of this rule and namespace asked for recently, %s old\n",
				i+1, q.Rule, store, q.Age.Round(time.Millisecond))
		} else {
			ew.printf("Query %d:  %s%s, %s\n", i+1, q.Rule, store, q.Duration.Round(time.Microsecond))
		}
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
		if q.Annotations != "" {
			ew.printf("  Annotations: %s\n", q.Annotations)
		}
		if q.Zeroed > 0 {
			ew.printf("  emptyIsZero: %d values without series answered 0\n", q.Zeroed)
		}
	}
	if r.NotShared != "" {
		ew.printf("Shared:   no: %s\n", r.NotShared)
	}
	if r.Err != nil {
		ew.printf("Answer:   HTTP %d %s: %v\n", r.Code, http.StatusText(r.Code), r.Err)
		return ew.err
	}
	n := len(r.Custom) + len(r.External) + len(r.Pods) + len(r.Nodes)
	ew.printf("Answer:   HTTP %d %s, %d values\n", r.Code, http.StatusText(r.Code), n)
	r.writeUsage(ew, n)
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

// writeUsage prints the resource metrics API's values: a line per
// container of each pod, a line per node.
func (r *Report) writeUsage(ew *errWriter, n int) {
	for i, pm := range r.Pods {
		if i == maxListed {
			ew.printf("    ... and %d more\n", n-maxListed)
			break
		}
		for _, c := range pm.Containers {
			ew.printf("    %s/%s container %s: cpu %s, memory %s at %s (window %s)\n", pm.Namespace, pm.Name, c.Name,
				c.Usage.Cpu(), c.Usage.Memory(), pm.Timestamp.UTC().Format(time.RFC3339), pm.Window.Duration)
		}
	}
	for i, nm := range r.Nodes {
		if i == maxListed {
			ew.printf("    ... and %d more\n", n-maxListed)
			break
		}
		ew.printf("    node %s: cpu %s, memory %s at %s (window %s)\n", nm.Name, nm.Usage.Cpu(), nm.Usage.Memory(),
			nm.Timestamp.UTC().Format(time.RFC3339), nm.Window.Duration)
	}
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
// report names it), 400 when the path is not a metrics request, and 403
// when authz does not let the caller make the request explained: a report
// shows the metric's values and Prometheus' raw series, so only a caller
// who may read the metric may read its report.
func Handler(p Providers, authz authorizer.Authorizer) http.Handler {
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
		if err := Authorize(r.Context(), authz, req); err != nil {
			apistatus.Write(w, r, err)
			return
		}
		rep := Run(r.Context(), p, req)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Explained-Status", fmt.Sprint(rep.Code))
		_ = rep.Write(w)
	})
}

// requestInfo reads a path as the API server's filter chain does.
var requestInfo = &request.RequestInfoFactory{APIPrefixes: sets.NewString("api", "apis"), GrouplessAPIPrefixes: sets.NewString("api")}

// Authorize asks authz whether the user of ctx may make req itself (GET
// its API path): the attributes are the ones the API server's filter chain
// would authorize that request with. It answers a StatusError, 403 when
// the caller may not.
func Authorize(ctx context.Context, authz authorizer.Authorizer, req Request) error {
	u, ok := request.UserFrom(ctx)
	if !ok {
		return apierrors.NewUnauthorized("explain: no user")
	}
	if authz == nil {
		return apierrors.NewForbidden(schema.GroupResource{Group: string(req.API)}, req.Metric, errors.New("no authorizer to check the request with"))
	}
	path := req.Path()
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	if err != nil {
		return apierrors.NewBadRequest(err.Error())
	}
	info, err := requestInfo.NewRequestInfo(hr)
	if err != nil {
		return apierrors.NewBadRequest(err.Error())
	}
	attrs := authorizer.AttributesRecord{
		User: u, Verb: info.Verb, Namespace: info.Namespace, APIGroup: info.APIGroup, APIVersion: info.APIVersion,
		Resource: info.Resource, Subresource: info.Subresource, Name: info.Name, ResourceRequest: info.IsResourceRequest, Path: info.Path,
	}
	decision, reason, err := authz.Authorize(ctx, attrs)
	if decision == authorizer.DecisionAllow {
		return nil
	}
	gr := schema.GroupResource{Group: info.APIGroup, Resource: info.Resource}
	why := fmt.Sprintf("explaining GET %s needs what that request needs: %s %s", path, info.Verb, gr)
	if reason != "" {
		why += ": " + reason
	}
	if err != nil {
		why += ": " + err.Error()
	}
	return apierrors.NewForbidden(gr, info.Name, errors.New(why))
}
