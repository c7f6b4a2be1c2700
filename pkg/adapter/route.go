package adapter

import (
	"context"
	"net/http"
	"path"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/endpoints/request"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/upstream"
)

// metricsRequest is a request to one of the metrics APIs, read from the
// request info the API server's filters parsed (and authorized): its API
// group, and, for a request of one metric, what it names.
type metricsRequest struct {
	group string
	// metric is set for a request of one metric (custom or external);
	// resource is the custom metric's resource as the request writes it
	// ("pods", "deployments.apps"); scope is the namespace whose rules may
	// serve it: the request's, the named namespace for a namespace's own
	// metric, "" for cluster-scoped objects.
	metric   string
	resource schema.GroupResource
	scope    string
	// discovery is set for the group's or a version's discovery.
	discovery bool
}

// apiGroupOf returns the metrics API group a request is for, or "" when it
// is for none of them: the one classification of a path the filters, the
// router and the selector check share.
func apiGroupOf(info *request.RequestInfo) string {
	group := info.APIGroup
	if !info.IsResourceRequest {
		// Discovery: /apis/GROUP or /apis/GROUP/VERSION.
		parts := strings.Split(strings.Trim(info.Path, "/"), "/")
		group = ""
		if len(parts) >= 2 && len(parts) <= 3 && parts[0] == "apis" {
			group = parts[1]
		}
	}
	switch group {
	case upstream.CustomGroup, upstream.ExternalGroup, upstream.ResourceGroup:
		return group
	}
	return ""
}

// parseMetricsRequest reads a request of group. It reports false for a
// path that is neither the group's discovery nor one of its request
// shapes: such a request is answered here (404) and never forwarded.
//
//	custom.metrics.k8s.io    /namespaces/NS/RESOURCE/NAME/METRIC
//	                         /RESOURCE/NAME/METRIC (cluster-scoped objects)
//	                         /namespaces/NS/metrics/METRIC (a namespace's own)
//	external.metrics.k8s.io  /namespaces/NS/METRIC
//	metrics.k8s.io           [/namespaces/NS]/pods[/NAME], /nodes[/NAME]
func parseMetricsRequest(group string, info *request.RequestInfo) (metricsRequest, bool) {
	m := metricsRequest{group: group}
	if !info.IsResourceRequest {
		m.discovery = true
		return m, true
	}
	if info.Verb != "get" && info.Verb != "list" {
		return m, false
	}
	parts := info.Parts
	switch group {
	case upstream.CustomGroup:
		switch {
		case info.Namespace != "" && len(parts) == 2 && parts[0] == "metrics":
			m.resource, m.metric, m.scope = rules.Namespaces, parts[1], info.Namespace
		case len(parts) == 3:
			m.resource, m.metric, m.scope = schema.ParseGroupResource(parts[0]), parts[2], info.Namespace
		default:
			return m, false
		}
	case upstream.ExternalGroup:
		if info.Namespace == "" || len(parts) != 1 {
			return m, false
		}
		m.metric, m.scope = parts[0], info.Namespace
	case upstream.ResourceGroup:
		if len(parts) > 2 || (parts[0] != "pods" && parts[0] != "nodes") || (parts[0] == "nodes" && info.Namespace != "") {
			return m, false
		}
	}
	return m, true
}

// router decides, for each metrics API request, whether this adapter
// serves it or an upstream does (--upstreams): its own rules first, in
// the request's namespace; what they do not serve goes to the first
// upstream that lists it; an API group this adapter does not serve at all
// goes, discovery included, to the first upstream of that group. It also
// refuses the spellings of a request whose authorization would not be the
// request's: a resource name that is not lower case, a namespace's metric
// asked as a cluster-scoped object.
type router struct {
	c   *components
	ups *upstream.Set
}

// served reports whether this adapter serves the API group.
func (rt *router) served(group string) bool {
	switch group {
	case upstream.CustomGroup:
		return rt.c.custom != nil
	case upstream.ExternalGroup:
		return rt.c.external != nil
	case upstream.ResourceGroup:
		return rt.c.resource != nil
	}
	return false
}

// upstreamFor returns the upstream that serves m, or nil when this adapter
// does (or nobody does: then the adapter answers 404 itself).
func (rt *router) upstreamFor(m metricsRequest) *upstream.Upstream {
	if rt.ups.Empty() {
		return nil
	}
	if !rt.served(m.group) {
		return rt.ups.ForGroup(m.group)
	}
	if m.metric == "" {
		return nil // discovery (merged with the upstreams'), and metrics.k8s.io: served here
	}
	switch m.group {
	case upstream.CustomGroup:
		gr := rt.c.custom.Normalize(m.resource)
		if rt.c.custom.Serves(gr, m.metric, m.scope) {
			return nil
		}
		return rt.ups.For(m.group, gr.String()+"/"+m.metric)
	case upstream.ExternalGroup:
		if rt.c.external.Serves(m.metric, m.scope) {
			return nil
		}
		return rt.ups.For(m.group, m.metric)
	}
	return nil
}

// refuse says why a custom metrics request is refused before it is
// served or forwarded, or returns nil. Authorization compares resource
// names as written: a spelling the REST mapper reads as another resource
// (PODS, or a namespace's metric as the cluster-scoped object
// namespaces/NAME) would be authorized as one thing and served as
// another.
func (rt *router) refuse(m metricsRequest, info *request.RequestInfo) error {
	if m.group != upstream.CustomGroup || m.metric == "" || rt.c.custom == nil {
		return nil
	}
	if s := m.resource.String(); strings.ToLower(s) != s {
		return apistatus.NotFound(apierrors.NewNotFound(m.resource, m.metric), "resource names are written in lower case, as the API serves them")
	}
	if info.Namespace == "" && rt.c.custom.Normalize(m.resource) == rules.Namespaces {
		return apistatus.NotFound(apierrors.NewNotFound(rules.Namespaces, m.metric), "a namespace's metric is asked as /namespaces/NAME/metrics/METRIC")
	}
	return nil
}

// handler forwards to an upstream what it serves, refuses what refuse
// says, and hands the rest to next. It runs inside the API server's
// filters: the request was authenticated and authorized here first, as
// the aggregator's request.
func (rt *router) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info, ok := request.RequestInfoFrom(r.Context())
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		group := apiGroupOf(info)
		if group == "" {
			next.ServeHTTP(w, r)
			return
		}
		m, ok := parseMetricsRequest(group, info)
		if !ok {
			next.ServeHTTP(w, r) // answered here: 404, 405
			return
		}
		if err := rt.refuse(m, info); err != nil {
			apistatus.Write(w, r, err)
			return
		}
		u := rt.upstreamFor(m)
		if u == nil {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodGet || path.Clean(r.URL.Path) != r.URL.Path {
			// Only what was parsed, as it was parsed, is sent on.
			apistatus.Write(w, r, apierrors.NewBadRequest("only GET of a metrics API path in its canonical form is forwarded to an upstream"))
			return
		}
		rt.ups.Forward(u, group, w, r)
	})
}

// Forward implements explain.Forwarder: the upstream's answer to req, as
// the caller of ctx (or the adapter itself, for `adapter explain`).
func (rt *router) Forward(ctx context.Context, req explain.Request) *explain.Forwarded {
	m := metricsRequest{group: string(req.API), metric: req.Metric, resource: req.Resource, scope: req.Namespace}
	if req.API == explain.Resource {
		m.metric = "" // pods and nodes
	}
	if req.API == explain.Custom && rt.c.custom != nil && rt.c.custom.Normalize(req.Resource) == rules.Namespaces {
		m.scope = req.Name
	}
	u := rt.upstreamFor(m)
	if u == nil {
		return nil
	}
	code, body, err := rt.ups.Get(ctx, u, req.Path())
	return &explain.Forwarded{Upstream: u.Name + " (" + u.URL.Host + ")", Code: code, Body: body, Err: err}
}
