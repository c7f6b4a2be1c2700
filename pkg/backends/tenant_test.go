package backends

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
)

func TestTenantSettingsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tenant  config.BackendTenant
		headers map[string]string
		want    string // in the error; "" for none
	}{
		{"a header", config.BackendTenant{Header: "X-Scope-OrgID"}, nil, ""},
		{"a parameter", config.BackendTenant{QueryParam: "namespace", Template: `<<index .Labels "team">>`}, nil, ""},
		{"neither", config.BackendTenant{}, nil, "one of header"},
		{"both", config.BackendTenant{Header: "X-Scope-OrgID", QueryParam: "namespace"}, nil, "one of header"},
		{"the client's header", config.BackendTenant{Header: "authorization"}, nil, "not a header"},
		{"a header with a colon", config.BackendTenant{Header: "X-A: b"}, nil, "not a header"},
		{"the header in headers too", config.BackendTenant{Header: "X-Scope-OrgID"}, map[string]string{"x-scope-orgid": "all"}, "in headers too"},
		{"the API's parameter", config.BackendTenant{QueryParam: "query"}, nil, "API's own parameters"},
		{"a parameter that is no label", config.BackendTenant{QueryParam: "match[]"}, nil, "label name"},
		{"a bad template", config.BackendTenant{Header: "X-Scope-OrgID", Template: "<<.Name"}, nil, "tenant.template"},
		{"negative bound", config.BackendTenant{Header: "X-Scope-OrgID", MaxTenants: -1}, nil, "maxTenants"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newTenancy(tc.tenant, tc.headers)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// A tenant is rendered from the namespace, and what cannot be a tenant of
// its own is refused: empty, too long, or one that would read several
// tenants at once (Cortex's "a|b") or escape into the request.
func TestTenantOfANamespace(t *testing.T) {
	byLabel, err := newTenancy(config.BackendTenant{Header: "X-Scope-OrgID", Template: `<<index .Labels "tenant">>`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	byName, err := newTenancy(config.BackendTenant{QueryParam: "namespace"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := func(tenant string) Namespace {
		return Namespace{Name: "shop", Labels: map[string]string{"tenant": tenant}}
	}
	if got, err := byName.Of(Namespace{Name: "shop"}); err != nil || got != "shop" {
		t.Fatalf("by name: %q, %v", got, err)
	}
	if got, err := byLabel.Of(ns("team-a")); err != nil || got != "team-a" {
		t.Fatalf("by label: %q, %v", got, err)
	}
	if _, err := byLabel.Of(Namespace{Name: "shop"}); !errors.Is(err, ErrNoTenant) {
		t.Fatalf("no label: err = %v, want ErrNoTenant", err)
	}
	for _, bad := range []string{"team-a|team-b", "team a", "..", "a/b", "a\r\nX-Other: 1", strings.Repeat("x", MaxTenantLength+1), strings.Repeat("x", 10*MaxTenantLength)} {
		if got, err := byLabel.Of(ns(bad)); err == nil {
			t.Errorf("tenant %q was taken as %q", bad, got)
		}
	}
}

func TestTenantsOfNamespaces(t *testing.T) {
	set, err := New(config.Backend{URL: "http://127.0.0.1:1"}, []config.Backend{
		{Name: "cortex", URL: "http://127.0.0.1:2", Tenant: &config.BackendTenant{Header: "X-Scope-OrgID", Template: `<<index .Labels "tenant">>`, MaxTenants: 2}},
	}, where)
	if err != nil {
		t.Fatal(err)
	}
	nss := map[string]Namespace{
		"a1": {Name: "a1", Labels: map[string]string{"tenant": "team-a"}},
		"a2": {Name: "a2", Labels: map[string]string{"tenant": "team-a"}},
		"b1": {Name: "b1", Labels: map[string]string{"tenant": "team-b"}},
		"c1": {Name: "c1", Labels: map[string]string{"tenant": "team-c"}},
		"x":  {Name: "x"},
	}
	tenants := &Tenants{
		Stores: func() *Set { return set },
		Namespace: func(_ context.Context, name string) (Namespace, error) {
			if ns, ok := nss[name]; ok {
				return ns, nil
			}
			return Namespace{}, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
		},
		List: func(context.Context) ([]Namespace, error) {
			var out []Namespace
			for _, ns := range nss {
				out = append(out, ns)
			}
			return out, nil
		},
	}
	ctx := context.Background()
	if tenant, has, err := tenants.Of(ctx, "cortex", "a2"); err != nil || !has || tenant != "team-a" {
		t.Fatalf("a2: %q %v %v", tenant, has, err)
	}
	if _, has, err := tenants.Of(ctx, "", "a2"); err != nil || has {
		t.Fatalf("the default store has no tenants: %v %v", has, err)
	}
	if _, _, err := tenants.Of(ctx, "cortex", "x"); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "namespace x has no tenant on backend cortex") {
		t.Fatalf("x: err = %v, want a 403 saying why", err)
	}
	if _, _, err := tenants.Of(ctx, "cortex", ""); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "in no namespace") {
		t.Fatalf("no namespace: err = %v, want a 403 saying why", err)
	}
	if _, _, err := tenants.Of(ctx, "cortex", "gone"); !apierrors.IsNotFound(err) {
		t.Fatalf("gone: err = %v, want 404", err)
	}
	all, has, err := tenants.All(ctx, "cortex")
	if !has || !errors.Is(err, ErrTooManyTenants) || strings.Join(all, ",") != "team-a,team-b" {
		t.Fatalf("All = %v, %v, %v: want the first two of three, and ErrTooManyTenants", all, has, err)
	}
}
