package query

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// limitedStore answers m{o=~"..."} with one sample per object it names,
// and, as VictoriaMetrics does, refuses a query longer than its limit.
type limitedStore struct {
	limit   int
	sent    []string
	tenants []string // the tenant each was sent as
}

func (s *limitedStore) MaxQueryLength() int { return s.limit }

var objectsOf = regexp.MustCompile(`o=~?"([^"]*)"`)

func (s *limitedStore) Query(ctx context.Context, expr string) (model.Vector, error) {
	s.sent = append(s.sent, expr)
	s.tenants = append(s.tenants, promclient.TenantFrom(ctx))
	if s.limit > 0 && len(expr) > s.limit {
		return nil, fmt.Errorf("too long query; got %d bytes; mustn't exceed -search.maxQueryLen=%d bytes", len(expr), s.limit)
	}
	m := objectsOf.FindStringSubmatch(expr)
	if m == nil {
		return nil, fmt.Errorf("no objects in %q", expr)
	}
	var out model.Vector
	for o := range strings.SplitSeq(m[1], "|") {
		out = append(out, &model.Sample{Metric: model.Metric{"o": model.LabelValue(o)}, Value: 1})
	}
	return out, nil
}

func objectsQuery(objects []string) Many {
	return Many{N: len(objects), Query: func(ids []int) Query {
		return Query{API: "custom", Rule: "rules[0]", What: func() string { return "m" }, Render: func() (string, error) {
			return "sum by (o) (m{" + promql.Join([]promql.Matcher{promql.OneOf("o", Pick(objects, ids))}) + "})", nil
		}}
	}}
}

func answered(v model.Vector) []string {
	var out []string
	for _, s := range v {
		out = append(out, string(s.Metric["o"]))
	}
	slices.Sort(out)
	return out
}

func TestRunMany(t *testing.T) {
	objects := make([]string, 1000)
	for i := range objects {
		objects[i] = fmt.Sprintf("pod-%04d", i)
	}
	whole, _ := objectsQuery(objects).Query(nil).Render()

	for _, tc := range []struct {
		name      string
		limit     int
		wantParts int // exactly; 0: more than one, each within the limit
	}{
		{name: "no limit: one query", limit: 0, wantParts: 1},
		{name: "a limit the query fits: one query", limit: len(whole), wantParts: 1},
		{name: "one byte less: two halves", limit: len(whole) - 1, wantParts: 2},
		{name: "a tenth: parts that each fit", limit: len(whole) / 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &limitedStore{limit: tc.limit}
			res, err := RunMany(context.Background(), Stores{Default: store}, objectsQuery(objects))
			if err != nil {
				t.Fatal(err)
			}
			if got := answered(res.Vector); !slices.Equal(got, objects) {
				t.Fatalf("answered %d objects (%v...), want the %d asked for, each once", len(got), got[:min(3, len(got))], len(objects))
			}
			if tc.wantParts > 0 && len(store.sent) != tc.wantParts {
				t.Fatalf("sent %d queries, want %d", len(store.sent), tc.wantParts)
			}
			if tc.wantParts == 0 && len(store.sent) < 2 {
				t.Fatalf("sent %d queries, want parts", len(store.sent))
			}
			for _, e := range store.sent {
				if tc.limit > 0 && len(e) > tc.limit {
					t.Fatalf("sent a %d-byte query to a store that takes %d", len(e), tc.limit)
				}
			}
		})
	}
}

// The attack: a request whose one object's query is already longer than
// the store takes (a label value of many KiB) is refused before anything
// is sent, as a 500 naming the rule, rather than hammering the store with
// halvings or sending what it refuses.
func TestRunManyRefusesWhatCannotFit(t *testing.T) {
	huge := strings.Repeat("x", 4096)
	objects := []string{"a", huge, "b"}
	store := &limitedStore{limit: 1024}
	_, err := RunMany(context.Background(), Stores{Default: store}, objectsQuery(objects))
	if !apierrors.IsInternalError(err) || !strings.Contains(err.Error(), "rules[0]") || !strings.Contains(err.Error(), "maxQueryLength") {
		t.Fatalf("err = %v, want a 500 naming the rule and maxQueryLength", err)
	}
	if len(store.sent) != 0 {
		t.Fatalf("sent %d queries, want none", len(store.sent))
	}
	// A query that is not sent in parts is refused whole too.
	store.sent = nil
	_, err = Run(context.Background(), Stores{Default: store}, objectsQuery(objects).Query(nil))
	if !apierrors.IsInternalError(err) || len(store.sent) != 0 {
		t.Fatalf("err = %v, sent %d: want a 500 and nothing sent", err, len(store.sent))
	}
}

// tenantsOf is a store with a tenant per namespace: a* namespaces are
// team-a's, b* team-b's; others have none (refused, as backends.Tenants
// refuses them).
func tenantsOf(_ context.Context, backend, ns string) (string, bool, error) {
	if backend != "cortex" {
		return "", false, nil
	}
	switch {
	case strings.HasPrefix(ns, "a"):
		return "team-a", true, nil
	case strings.HasPrefix(ns, "b"):
		return "team-b", true, nil
	}
	return "", true, apierrors.NewForbidden(corev1.Resource("namespaces"), ns, fmt.Errorf("namespace %s has no tenant", ns))
}

// tenantObjects is a query about objects, each its own namespace, on the
// store "cortex", whose tenants are tenantsOf's.
func tenantObjects(objects []string) (*limitedStore, Stores, Many) {
	store := &limitedStore{}
	stores := Stores{Named: func(string) promclient.Querier { return store }, Tenant: tenantsOf}
	m := objectsQuery(objects)
	m.NamespaceOf = func(i int) string { return objects[i] }
	query := m.Query
	m.Query = func(ids []int) Query { q := query(ids); q.Backend = "cortex"; return q }
	return store, stores, m
}

// On a store with a tenant per namespace, objects of several namespaces
// (the namespaces themselves, kubectl top's pods) go in one query per
// tenant, each sent as its tenant and naming its objects only; a query
// about one namespace goes as its tenant.
func TestRunManyOneQueryPerTenant(t *testing.T) {
	objects := []string{"a1", "b1", "a2", "b2", "a3"}
	store, stores, m := tenantObjects(objects)
	res, err := RunMany(context.Background(), stores, m)
	if err != nil {
		t.Fatal(err)
	}
	if got := answered(res.Vector); !slices.Equal(got, []string{"a1", "a2", "a3", "b1", "b2"}) {
		t.Fatalf("answered %v", got)
	}
	want := map[string]string{"team-a": `o=~"a1|a2|a3"`, "team-b": `o=~"b1|b2"`}
	if len(store.sent) != 2 {
		t.Fatalf("sent %q, want one query per tenant", store.sent)
	}
	for i, expr := range store.sent {
		if w, ok := want[store.tenants[i]]; !ok || !strings.Contains(expr, w) {
			t.Errorf("sent %s as tenant %q, want %s", expr, store.tenants[i], w)
		}
	}

	// One query about one namespace runs as its tenant.
	store.sent, store.tenants = nil, nil
	if _, err := Run(context.Background(), stores, m.Query([]int{1}).In("b1")); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(store.tenants, []string{"team-b"}) {
		t.Fatalf("sent as %q, want team-b", store.tenants)
	}
}

// The attack: a namespace with no tenant (none of its own, or one that
// would read another's) asks, alone or among others: the request is
// refused with the reason, and nothing is sent at all, as no tenant or as
// the others'.
func TestRunManyRefusesANamespaceWithoutTenant(t *testing.T) {
	objects := []string{"a1", "b1", "c1"}
	store, stores, m := tenantObjects(objects)
	if _, err := RunMany(context.Background(), stores, m); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "c1 has no tenant") {
		t.Fatalf("err = %v, want 403 naming c1", err)
	}
	if _, err := Run(context.Background(), stores, m.Query(nil).In("c1")); !apierrors.IsForbidden(err) {
		t.Fatalf("err = %v, want 403", err)
	}
	if len(store.sent) != 0 {
		t.Fatalf("sent %q, want nothing", store.sent)
	}
}
