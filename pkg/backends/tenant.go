package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"text/template"

	"github.com/prometheus/common/model"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
)

// Namespace is what a tenant template reads of a namespace: its name,
// labels and annotations, from the adapter's cache.
type Namespace struct {
	Name        string
	Labels      map[string]string
	Annotations map[string]string
}

// Tenancy is how a store's requests carry the tenant of the request's
// namespace (config.BackendTenant).
type Tenancy struct {
	// Header or QueryParam carries the tenant.
	Header, QueryParam string
	// MaxTenants bounds the tenants discovery lists per round.
	MaxTenants int
	template   *template.Template
	source     string
}

// DefaultTenantTemplate makes the namespace's name its tenant.
const DefaultTenantTemplate = "<<.Name>>"

// MaxTenantLength is the longest tenant: Cortex's and Mimir's bound on a
// tenant ID.
const MaxTenantLength = 150

// validTenant is what a tenant may hold: the characters Cortex and Mimir
// take in a tenant ID, which leaves out "|" (their separator of several
// tenants, whose series a query would read together), "/", spaces and
// control characters.
var validTenant = regexp.MustCompile(`^[A-Za-z0-9!._*'()-]+$`)

// paramsTheClientSets are the URL parameters of the Prometheus HTTP API
// that a tenant parameter must not replace.
var paramsTheClientSets = []string{"query", "match[]", "start", "end", "time", "timeout", "limit", "step", "stats", "lookback_delta"}

// headersTheClientSets are headers a tenant header must not replace.
var headersTheClientSets = []string{"Authorization", "Host", "Content-Type", "Content-Length", "User-Agent", "Accept", "Accept-Encoding", "Connection", "Transfer-Encoding"}

// newTenancy checks a store's tenant settings and parses its template.
func newTenancy(t config.BackendTenant, headers map[string]string) (*Tenancy, error) {
	switch {
	case (t.Header == "") == (t.QueryParam == ""):
		return nil, errors.New("tenant needs one of header (e.g. X-Scope-OrgID) and queryParam (e.g. namespace, for prom-label-proxy)")
	case t.MaxTenants < 0:
		return nil, fmt.Errorf("tenant.maxTenants must not be negative, got %d", t.MaxTenants)
	}
	if t.Header != "" {
		canonical := http.CanonicalHeaderKey(t.Header)
		if strings.ContainsAny(t.Header, " :\t\r\n()<>@,;\\\"/[]?={}") || slices.Contains(headersTheClientSets, canonical) {
			return nil, fmt.Errorf("tenant.header %q is not a header the tenant can go in", t.Header)
		}
		for name := range headers {
			if http.CanonicalHeaderKey(name) == canonical {
				return nil, fmt.Errorf("tenant.header %q is in headers too: the tenant is the namespace's, leave it out of headers", t.Header)
			}
		}
	}
	if t.QueryParam != "" && (!model.LegacyValidation.IsValidLabelName(t.QueryParam) || slices.Contains(paramsTheClientSets, t.QueryParam)) {
		return nil, fmt.Errorf("tenant.queryParam %q must be a label name, and not one of the API's own parameters (%s)", t.QueryParam, strings.Join(paramsTheClientSets, ", "))
	}
	src := t.Template
	if src == "" {
		src = DefaultTenantTemplate
	}
	tmpl, err := template.New("tenant").Delims("<<", ">>").Option("missingkey=zero").Parse(src)
	if err != nil {
		return nil, fmt.Errorf("tenant.template: %w", err)
	}
	maxTenants := t.MaxTenants
	if maxTenants == 0 {
		maxTenants = config.DefaultMaxTenants
	}
	return &Tenancy{Header: t.Header, QueryParam: t.QueryParam, MaxTenants: maxTenants, template: tmpl, source: src}, nil
}

// Template is the template the tenant is rendered from.
func (t *Tenancy) Template() string { return t.source }

// Carrier says where the tenant goes: "header X-Scope-OrgID" or "query
// parameter namespace".
func (t *Tenancy) Carrier() string {
	if t.Header != "" {
		return "header " + t.Header
	}
	return "query parameter " + t.QueryParam
}

// ErrNoTenant is a namespace whose tenant renders empty.
var ErrNoTenant = errors.New("no tenant")

// Of renders ns's tenant. A tenant that renders empty is ErrNoTenant; one
// longer than MaxTenantLength or with characters outside Cortex's set
// (among them "|", which would read several tenants) is an error too:
// the request is refused, and nothing is sent.
func (t *Tenancy) Of(ns Namespace) (string, error) {
	var b bytes.Buffer
	if err := t.template.Execute(&limitedWriter{w: &b, left: 4 * MaxTenantLength}, ns); err != nil {
		return "", fmt.Errorf("rendering the tenant of namespace %q: %w", ns.Name, err)
	}
	tenant := strings.TrimSpace(b.String())
	switch {
	case tenant == "":
		return "", ErrNoTenant
	case len(tenant) > MaxTenantLength:
		return "", fmt.Errorf("the tenant of namespace %q is %d bytes, longer than %d", ns.Name, len(tenant), MaxTenantLength)
	case tenant == "." || tenant == ".." || !validTenant.MatchString(tenant):
		return "", fmt.Errorf("the tenant of namespace %q, %q, is not a tenant ID (letters, digits and !-_.*'() only)", ns.Name, tenant)
	}
	return tenant, nil
}

// limitedWriter fails past left bytes.
type limitedWriter struct {
	w    *bytes.Buffer
	left int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if len(p) > l.left {
		return 0, fmt.Errorf("the tenant renders longer than %d bytes", MaxTenantLength)
	}
	l.left -= len(p)
	return l.w.Write(p)
}

// Tenants maps namespaces to their tenants on the stores that have them.
type Tenants struct {
	// Stores are the stores in use (swapped by a reload).
	Stores func() *Set
	// Namespace reads one namespace from the adapter's cache (a NotFound
	// error when there is none); List reads them all.
	Namespace func(ctx context.Context, name string) (Namespace, error)
	List      func(ctx context.Context) ([]Namespace, error)
}

// Of is the tenant of namespace ns ("" for what is in no namespace, such as
// nodes) on the store named backend; has is false when that store has no
// tenants. Its errors are StatusErrors: a namespace that does not exist
// is a 404, one whose tenant renders empty or invalid a 403 saying why, so
// that nothing is sent as no tenant or another's.
func (t *Tenants) Of(ctx context.Context, backend, ns string) (tenant string, has bool, err error) {
	st := t.Stores().Store(backend)
	if st == nil || st.Tenancy == nil {
		return "", false, nil
	}
	n := Namespace{Name: ns}
	if ns != "" {
		if n, err = t.Namespace(ctx, ns); err != nil {
			if apierrors.IsNotFound(err) {
				return "", true, apierrors.NewNotFound(corev1.Resource("namespaces"), ns)
			}
			return "", true, apierrors.NewServiceUnavailable(fmt.Sprintf("reading namespace %s for its tenant on backend %s: %v", ns, st.Name, err))
		}
	}
	tenant, err = st.Tenancy.Of(n)
	if err != nil {
		metrics.ObserveTenantRefused(st.Name)
	}
	switch {
	case errors.Is(err, ErrNoTenant) && ns == "":
		return "", true, apierrors.NewForbidden(corev1.Resource("namespaces"), "",
			fmt.Errorf("what is in no namespace has no tenant on backend %s (its tenant.template %s renders empty without one): nothing was sent", st.Name, st.Tenancy.source))
	case errors.Is(err, ErrNoTenant):
		return "", true, apierrors.NewForbidden(corev1.Resource("namespaces"), ns,
			fmt.Errorf("namespace %s has no tenant on backend %s (its tenant.template %s renders empty for it): nothing was sent", ns, st.Name, st.Tenancy.source))
	case err != nil:
		return "", true, apierrors.NewForbidden(corev1.Resource("namespaces"), ns, fmt.Errorf("backend %s: %w: nothing was sent", st.Name, err))
	}
	return tenant, true, nil
}

// ErrTooManyTenants is a store with more tenants than its
// tenant.maxTenants: discovery lists the first ones only.
var ErrTooManyTenants = errors.New("more tenants than tenant.maxTenants")

// All is the distinct tenants of the namespaces on the store named backend,
// sorted, at most its tenant.maxTenants (with ErrTooManyTenants when there
// are more: the first ones are returned); has is false when that store
// has no tenants. Namespaces without a valid tenant are left out.
func (t *Tenants) All(ctx context.Context, backend string) (tenants []string, has bool, err error) {
	st := t.Stores().Store(backend)
	if st == nil || st.Tenancy == nil {
		return nil, false, nil
	}
	nss, err := t.List(ctx)
	if err != nil {
		return nil, true, fmt.Errorf("reading the namespaces for their tenants on backend %s: %w", st.Name, err)
	}
	for _, ns := range nss {
		if tenant, err := st.Tenancy.Of(ns); err == nil {
			tenants = append(tenants, tenant)
		}
	}
	slices.Sort(tenants)
	tenants = slices.Compact(tenants)
	if n := len(tenants); n > st.Tenancy.MaxTenants {
		metrics.SetDiscoveryTenants(st.Name, st.Tenancy.MaxTenants, n-st.Tenancy.MaxTenants)
		return tenants[:st.Tenancy.MaxTenants], true, fmt.Errorf("%w: backend %s has %d, its tenant.maxTenants is %d", ErrTooManyTenants, st.Name, n, st.Tenancy.MaxTenants)
	}
	metrics.SetDiscoveryTenants(st.Name, len(tenants), 0)
	return tenants, true, nil
}
