package upstream

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/client-go/rest"
)

// fakeUpstream is another metrics server: it lists pods/pa-rps in the
// custom metrics API and answers it, recording what it was sent.
type fakeUpstream struct {
	srv    *httptest.Server
	caFile string
	mu     sync.Mutex
	seen   []http.Header
	delay  time.Duration
}

func newFakeUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.seen = append(f.seen, r.Header.Clone())
		delay := f.delay
		f.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		switch r.URL.Path {
		case "/apis/custom.metrics.k8s.io/v1beta2":
			_ = json.NewEncoder(w).Encode(metav1.APIResourceList{GroupVersion: "custom.metrics.k8s.io/v1beta2",
				APIResources: []metav1.APIResource{{Name: "pods/pa-rps", Namespaced: true, Kind: "MetricValueList"}}})
		case "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps":
			w.Header().Set("Content-Type", "application/vnd.test")
			w.WriteHeader(http.StatusTeapot) // passed back as it is
			_, _ = io.WriteString(w, "upstream's answer for "+r.URL.RawQuery)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	f.caFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(f.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeUpstream) headers() []http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

func newSet(t *testing.T, f *fakeUpstream, timeout time.Duration) *Set {
	t.Helper()
	s, err := New([]Spec{{Name: "pa", Groups: []string{CustomGroup}, URL: f.srv.URL, CAFile: f.caFile}},
		&rest.Config{BearerToken: "adapter-token"}, timeout, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A forwarded request reaches the upstream with the adapter's credentials
// and the caller as impersonation headers, never with the caller's own
// credentials or identity headers; the answer comes back unchanged.
func TestForwardImpersonatesTheCaller(t *testing.T) {
	f := newFakeUpstream(t)
	s := newSet(t, f, 5*time.Second)
	s.Refresh(context.Background())
	u := s.For(CustomGroup, "pods/pa-rps")
	if u == nil || s.For(CustomGroup, "pods/other") != nil {
		t.Fatalf("For: %v; want the upstream for pods/pa-rps only", u)
	}
	if got := s.Resources(CustomGroup); len(got) != 1 || got[0].Name != "pods/pa-rps" {
		t.Errorf("Resources = %v", got)
	}

	req := httptest.NewRequest(http.MethodGet, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps?labelSelector=app%3Dweb", nil)
	req.Header.Set("Authorization", "Bearer the-callers-token")
	req.Header.Set("X-Remote-User", "someone-else")
	req.Header.Set("Impersonate-User", "someone-else")
	req.Header.Set("Accept", "application/json")
	req = req.WithContext(request.WithUser(req.Context(), &user.DefaultInfo{Name: "alice", UID: "u-1",
		Groups: []string{"team-a", user.AllAuthenticated}, Extra: map[string][]string{"scopes.example/x": {"read"}}}))
	rec := httptest.NewRecorder()
	s.Forward(u, CustomGroup, rec, req)

	if rec.Code != http.StatusTeapot || rec.Header().Get("Content-Type") != "application/vnd.test" || rec.Body.String() != "upstream's answer for labelSelector=app%3Dweb" {
		t.Errorf("answer %d %q %q, want the upstream's unchanged", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
	hs := f.headers()
	h := hs[len(hs)-1]
	for name, want := range map[string][]string{
		"Authorization":                        {"Bearer adapter-token"},
		"Impersonate-User":                     {"alice"},
		"Impersonate-Uid":                      {"u-1"},
		"Impersonate-Group":                    {"team-a"},
		"Impersonate-Extra-Scopes.example%2Fx": {"read"},
		"X-Remote-User":                        nil,
		"Accept":                               {"application/json"},
	} {
		if got := h.Values(name); !slices.Equal(got, want) {
			t.Errorf("the upstream got %s: %q, want %q", name, got, want)
		}
	}

	// Without a user (not through the filters) nothing is forwarded.
	rec = httptest.NewRecorder()
	s.Forward(u, CustomGroup, rec, httptest.NewRequest(http.MethodGet, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("no user: %d, want 401", rec.Code)
	}
}

// An upstream that is down or slow costs only its own requests: 503 or 504
// naming it, within the timeout; its discovery keeps the last good list.
func TestAFailingUpstreamStaysLocal(t *testing.T) {
	f := newFakeUpstream(t)
	s := newSet(t, f, 300*time.Millisecond)
	s.Refresh(context.Background())
	u := s.For(CustomGroup, "pods/pa-rps")
	ctx := request.WithUser(context.Background(), &user.DefaultInfo{Name: "alice"})
	forward := func() (int, string, time.Duration) {
		req := httptest.NewRequest(http.MethodGet, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps", nil).WithContext(ctx)
		rec := httptest.NewRecorder()
		start := time.Now()
		s.Forward(u, CustomGroup, rec, req)
		return rec.Code, rec.Body.String(), time.Since(start)
	}

	f.mu.Lock()
	f.delay = 5 * time.Second
	f.mu.Unlock()
	if code, body, took := forward(); code != http.StatusGatewayTimeout || !strings.Contains(body, "upstream pa") || took > 3*time.Second {
		t.Errorf("a slow upstream: %d %s after %v, want 504 naming it within the 300ms timeout", code, body, took)
	}
	s.Refresh(context.Background())
	if s.For(CustomGroup, "pods/pa-rps") == nil {
		t.Error("a failed discovery read dropped the last good list")
	}

	f.srv.Close()
	if code, body, _ := forward(); code != http.StatusServiceUnavailable || !strings.Contains(body, "upstream pa") || !strings.Contains(body, "unavailable") {
		t.Errorf("a stopped upstream: %d %s, want 503 naming it", code, body)
	}
	code, _, err := s.Get(ctx, u, "/apis/custom.metrics.k8s.io/v1beta2")
	if code != http.StatusServiceUnavailable || !apierrors.IsServiceUnavailable(err) {
		t.Errorf("Get from a stopped upstream: %d %v", code, err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(text string) string {
		p := filepath.Join(dir, "upstreams.yaml")
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := "upstreams:\n- name: pa\n  groups: [custom.metrics.k8s.io]\n  service: {namespace: monitoring, name: prometheus-adapter}\n  caFile: " + ca + "\n"
	specs, err := Load(write(good))
	if err != nil || len(specs) != 1 {
		t.Fatalf("Load: %v, %v", specs, err)
	}
	if u, _ := specs[0].base(); u.String() != "https://prometheus-adapter.monitoring.svc:443" {
		t.Errorf("a Service's URL = %s", u)
	}
	for text, want := range map[string]string{
		"upstreams:\n- name: pa\n  groups: [apps]\n  url: https://x\n  caFile: " + ca + "\n":                            `"apps" is not a metrics API group`,
		"upstreams:\n- name: pa\n  groups: [metrics.k8s.io]\n  url: http://x\n  caFile: " + ca + "\n":                   "want https://",
		"upstreams:\n- name: pa\n  groups: [metrics.k8s.io]\n  url: https://x\n":                                        "caFile is required",
		"upstreams:\n- groups: [metrics.k8s.io]\n  url: https://x\n  service: {namespace: a, name: b}\n  caFile: " + ca: "set one of url and service",
		"upstreams:\n- nmae: pa\n": "field nmae not found",
	} {
		if _, err := Load(write(text)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", text, err, want)
		}
	}
}
