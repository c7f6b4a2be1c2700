package promclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// tenantSeen serves an empty vector (after wait) and records the tenant
// header and the namespace URL parameter of each request.
func tenantSeen(t *testing.T, wait time.Duration) (*httptest.Server, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(wait)
		mu.Lock()
		seen = append(seen, r.Header.Get("X-Scope-OrgID")+"|"+r.URL.Query().Get("namespace")+"|"+r.FormValue("query"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/api/v1/series" {
			_, _ = w.Write([]byte(`{"status":"success","data":[]}`))
			return
		}
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[]}}`))
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

func TestTenantGoesInItsHeaderOrParameter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		want   string
		series string
	}{
		{"header, POST", Config{TenantHeader: "X-Scope-OrgID"}, "team-a||up", "team-a||"},
		{"parameter, POST", Config{TenantParam: "namespace"}, "|team-a|up", "|team-a|"},
		{"parameter, GET", Config{TenantParam: "namespace", Method: MethodGET}, "|team-a|up", "|team-a|"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, seen := tenantSeen(t, 0)
			tc.cfg.URL = srv.URL
			c, err := New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := WithTenant(context.Background(), "team-a")
			if _, err := c.Query(ctx, "up"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Series(ctx, []string{"up"}, time.Now().Add(-time.Minute), time.Now()); err != nil {
				t.Fatal(err)
			}
			got := seen()
			if len(got) != 2 || got[0] != tc.want || got[1] != tc.series {
				t.Fatalf("the store saw %q, want [%q %q]", got, tc.want, tc.series)
			}
		})
	}
}

// The attack surface: a request without a tenant on a store that has
// them is refused before it is sent (never as nobody's, which a proxy may
// read as everybody's); and identical queries of two tenants are two
// requests, never one answer shared across tenants.
func TestTenantIsNeverLeftOutOrShared(t *testing.T) {
	srv, seen := tenantSeen(t, 200*time.Millisecond)
	c, err := New(Config{URL: srv.URL, TenantHeader: "X-Scope-OrgID"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Query(context.Background(), "up"); !errors.Is(err, ErrNoTenant) {
		t.Fatalf("err = %v, want ErrNoTenant", err)
	}
	if _, err := c.Series(context.Background(), []string{"up"}, time.Now().Add(-time.Minute), time.Now()); !errors.Is(err, ErrNoTenant) {
		t.Fatalf("series: err = %v, want ErrNoTenant", err)
	}
	if got := seen(); len(got) != 0 {
		t.Fatalf("the store saw %q, want nothing", got)
	}
	var wg sync.WaitGroup
	for _, tenant := range []string{"team-a", "team-b", "team-a"} {
		wg.Go(func() {
			if _, err := c.Query(WithTenant(context.Background(), tenant), "up"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got := map[string]int{}
	for _, s := range seen() {
		got[s]++
	}
	if got["team-b||up"] != 1 || got["team-a||up"] < 1 || len(got) != 2 {
		t.Fatalf("the store saw %v, want team-a's and team-b's queries apart", got)
	}
	if _, err := New(Config{URL: srv.URL, TenantHeader: "X-Scope-OrgID", TenantParam: "namespace"}); err == nil {
		t.Fatal("a tenant in a header and a parameter was taken")
	}
}
