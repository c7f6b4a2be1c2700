package backends

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
)

func where(i int, field string) string {
	return "f.yaml:" + string(rune('1'+i)) + ": backends." + field
}

// Each store gets its own client: its URL, verb, credentials and headers
// reach it, and no other store's.
func TestEachStoreHasItsOwnClient(t *testing.T) {
	type seen struct{ method, auth, user, header string }
	got := map[string]seen{}
	serve := func(name string) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, _, _ := r.BasicAuth()
			got[name] = seen{r.Method, r.Header.Get("Authorization"), u, r.Header.Get("X-Scope-OrgID")}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[]}}`))
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	def, east, west := serve("default"), serve("east"), serve("west")
	dir := t.TempDir()
	token, password := filepath.Join(dir, "token"), filepath.Join(dir, "password")
	for f, v := range map[string]string{token: "s3cret", password: "pw"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(config.Backend{URL: def.URL, Timeout: model.Duration(time.Second)}, []config.Backend{
		{Name: "east", URL: east.URL, Verb: "get", Auth: config.BackendAuth{BearerTokenFile: token}, Headers: map[string]string{"X-Scope-OrgID": "tenant-1"}},
		{Name: "west", URL: west.URL, Auth: config.BackendAuth{BasicAuth: &config.BasicAuth{Username: "adapter", PasswordFile: password}}, Teams: true},
	}, where)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "east", "west"} {
		if _, err := s.Querier(name).Query(context.Background(), "up"); err != nil {
			t.Fatalf("%q: %v", name, err)
		}
	}
	want := map[string]seen{
		"default": {method: http.MethodPost},
		"east":    {method: http.MethodGet, auth: "Bearer s3cret", header: "tenant-1"},
		"west":    {method: http.MethodPost, auth: got["west"].auth, user: "adapter"},
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s got %+v, want %+v", name, got[name], w)
		}
	}
	if s.Querier("north") != nil || s.Store("") != s.Store(config.DefaultBackend) || !s.Store("west").Teams {
		t.Errorf("lookups: north %v, default %v, west teams %v", s.Querier("north"), s.Store(""), s.Store("west").Teams)
	}
	if names := s.Names(); strings.Join(names, ",") != "default,east,west" {
		t.Errorf("Names = %v", names)
	}
}

// What a store cannot be built from is an error naming the file, line
// and field; every problem is reported.
func TestNewReportsEveryProblem(t *testing.T) {
	def := config.Backend{URL: "http://prometheus:9090"}
	for _, tc := range []struct {
		name string
		spec config.Backend
		want string
	}{
		{"the default's name", config.Backend{Name: "default", URL: "http://x"}, `backends.name: "default" names the store of --prometheus-url`},
		{"a name that is not a DNS label", config.Backend{Name: "East_1", URL: "http://x"}, "not a DNS label"},
		{"no URL", config.Backend{Name: "east"}, "must be an absolute http or https URL"},
		{"a relative URL", config.Backend{Name: "east", URL: "/prometheus"}, "must be an absolute"},
		{"a verb", config.Backend{Name: "east", URL: "http://x", Verb: "PUT"}, "verb must be GET or POST"},
		{"two credentials", config.Backend{Name: "east", URL: "http://x", Auth: config.BackendAuth{BearerTokenFile: "t", Kubeconfig: "k"}}, "auth takes one of"},
		{"basic auth without a password file", config.Backend{Name: "east", URL: "http://x", Auth: config.BackendAuth{BasicAuth: &config.BasicAuth{Username: "u"}}}, "needs username and passwordFile"},
		{"a certificate without its key", config.Backend{Name: "east", URL: "http://x", TLS: config.BackendTLS{CertFile: "c"}}, "go together"},
		{"a header the client sets", config.Backend{Name: "east", URL: "http://x", Headers: map[string]string{"Authorization": "Bearer x"}}, "Authorization"},
		{"a header that is not one", config.Backend{Name: "east", URL: "http://x", Headers: map[string]string{"X: Y": "z"}}, "not a valid HTTP header"},
		{"a missing CA file", config.Backend{Name: "east", URL: "https://x", TLS: config.BackendTLS{CAFile: "/does/not/exist.pem"}}, "exist.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(def, []config.Backend{tc.spec}, where)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "f.yaml:1: backends.") {
				t.Errorf("got %v, want an error naming the field and saying %q", err, tc.want)
			}
		})
	}
	_, err := New(def, []config.Backend{{Name: "east", URL: "http://x"}, {Name: "east", URL: "http://y"}, {Name: "west"}}, where)
	if err == nil || !strings.Contains(err.Error(), `"east" is used twice`) || !strings.Contains(err.Error(), "f.yaml:3") {
		t.Errorf("two problems: %v, want both", err)
	}
}
