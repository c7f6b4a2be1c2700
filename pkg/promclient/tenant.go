package promclient

import (
	"context"
	"errors"
	"net/http"
)

// tenantKey carries a request's tenant in its context.
type tenantKey struct{}

// WithTenant returns ctx with the tenant every request made with it is
// sent as, on a store with tenants (Config.TenantHeader or TenantParam).
// A store without tenants ignores it.
func WithTenant(ctx context.Context, tenant string) context.Context {
	return context.WithValue(ctx, tenantKey{}, tenant)
}

// TenantFrom is the tenant WithTenant set on ctx, or "".
func TenantFrom(ctx context.Context) string {
	t, _ := ctx.Value(tenantKey{}).(string)
	return t
}

// ErrNoTenant is a request to a store with tenants whose context carries
// none: it is refused, never sent as nobody's or everybody's.
var ErrNoTenant = errors.New("the store has a tenant per namespace, and this request has none")

// tenantRoundTripper sends each request as its context's tenant, in a
// header (Cortex's and Mimir's X-Scope-OrgID) or a URL parameter
// (prom-label-proxy's enforced label), replacing any the request had; a
// request without a tenant is refused before it is sent.
type tenantRoundTripper struct {
	next          http.RoundTripper
	header, param string
}

func (t tenantRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	tenant := TenantFrom(req.Context())
	if tenant == "" {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, ErrNoTenant
	}
	req = req.Clone(req.Context())
	if t.header != "" {
		req.Header.Set(t.header, tenant)
	} else {
		q := req.URL.Query()
		q.Set(t.param, tenant)
		req.URL.RawQuery = q.Encode()
	}
	return t.next.RoundTrip(req)
}
