package adapter

import (
	"context"
	"net/http"
	"strings"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/upstream"
)

// router decides, for each metrics API request, whether this adapter
// serves it or an upstream does (--upstreams): its own rules first; what
// they do not serve goes to the first upstream that lists it; an API group
// this adapter does not serve at all goes, discovery included, to the
// first upstream of that group.
type router struct {
	c   *components
	ups *upstream.Set
}

// apiOf returns the metrics API group a path is in, or "".
func apiOf(path string) string {
	for _, g := range []string{upstream.CustomGroup, upstream.ExternalGroup, upstream.ResourceGroup} {
		if path == "/apis/"+g || strings.HasPrefix(path, "/apis/"+g+"/") {
			return g
		}
	}
	return ""
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

// upstreamFor returns the upstream that serves req, or nil when this
// adapter does (or nobody does: then the adapter answers 404 itself).
func (rt *router) upstreamFor(req explain.Request) *upstream.Upstream {
	group := string(req.API)
	if !rt.served(group) {
		return rt.ups.ForGroup(group)
	}
	switch req.API {
	case explain.Custom:
		gr := rt.c.custom.Normalize(req.Resource)
		if rt.c.custom.Serves(gr, req.Metric) {
			return nil
		}
		return rt.ups.For(group, gr.String()+"/"+req.Metric)
	case explain.External:
		if rt.c.external.Serves(req.Metric) {
			return nil
		}
		return rt.ups.For(group, req.Metric)
	}
	return nil // metrics.k8s.io: pods and nodes, all of it served here
}

// handler forwards to an upstream what it serves, and hands the rest to
// next. It runs inside the API server's filters: the request was
// authenticated and authorized here first, as the aggregator's request.
func (rt *router) handler(next http.Handler) http.Handler {
	if rt.ups.Empty() {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		group := apiOf(r.URL.Path)
		if group == "" || r.Method != http.MethodGet {
			next.ServeHTTP(w, r)
			return
		}
		if !rt.served(group) {
			if u := rt.ups.ForGroup(group); u != nil {
				rt.ups.Forward(u, group, w, r)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if group == upstream.ResourceGroup {
			next.ServeHTTP(w, r) // pods and nodes: all of it served here
			return
		}
		req, err := explain.ParsePath(r.URL.Path, r.URL.Query())
		if err != nil {
			// Discovery of a served group (merged with the upstreams'),
			// or not a metrics request: served here.
			next.ServeHTTP(w, r)
			return
		}
		if u := rt.upstreamFor(req); u != nil {
			rt.ups.Forward(u, group, w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Forward implements explain.Forwarder: the upstream's answer to req, as
// the caller of ctx (or the adapter itself, for `adapter explain`).
func (rt *router) Forward(ctx context.Context, req explain.Request) *explain.Forwarded {
	u := rt.upstreamFor(req)
	if u == nil {
		return nil
	}
	code, body, err := rt.ups.Get(ctx, u, req.Path())
	return &explain.Forwarded{Upstream: u.Name + " (" + u.URL.Host + ")", Code: code, Body: body, Err: err}
}
