package upstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
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

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// forwardingCert writes a CA of its own and a client certificate it
// signed (CN "forwarding-client"), as hack/gen-forwarding-cert.sh does, and
// returns the CA's PEM, the files and the CA's pool.
func forwardingCert(t *testing.T) (caPEM []byte, certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	files, err := localstack.GenerateTLSFiles(t.TempDir(), "forwarding")
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err = os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return caPEM, files.ClientCert, files.ClientKey, pool
}

// fakeUpstream is another metrics server: it takes only clients with a
// certificate of its requestheader CA (the forwarding certificate's),
// lists pods/pa-rps in the custom metrics API and answers it, recording
// what it was sent.
type fakeUpstream struct {
	srv              *httptest.Server
	caFile           string
	certFile, keyFle string
	// forwardingCA is the PEM of the CA that signed certFile.
	forwardingCA []byte
	mu           sync.Mutex
	seen         []http.Header
	paths        []string
	delay        time.Duration
	answer       []byte
}

func newFakeUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{}
	var pool *x509.CertPool
	f.forwardingCA, f.certFile, f.keyFle, pool = forwardingCert(t)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.seen = append(f.seen, r.Header.Clone())
		f.paths = append(f.paths, r.URL.EscapedPath())
		delay, answer := f.delay, f.answer
		f.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		switch r.URL.Path {
		case "/apis/custom.metrics.k8s.io/v1beta2":
			if answer != nil {
				_, _ = w.Write(answer)
				return
			}
			_ = json.NewEncoder(w).Encode(metav1.APIResourceList{GroupVersion: "custom.metrics.k8s.io/v1beta2",
				APIResources: []metav1.APIResource{{Name: "pods/pa-rps", Namespaced: true, Kind: "MetricValueList"}}})
		case "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps":
			w.Header().Set("Content-Type", "application/vnd.test")
			w.Header().Set("Set-Cookie", "upstream=1")
			w.WriteHeader(http.StatusTeapot) // passed back as it is
			if answer != nil {
				_, _ = w.Write(answer)
				return
			}
			_, _ = io.WriteString(w, "upstream's answer for "+r.URL.RawQuery)
		default:
			http.NotFound(w, r)
		}
	}))
	f.srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	f.srv.StartTLS()
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

func (f *fakeUpstream) spec() Spec {
	return Spec{Name: "pa", Groups: []string{CustomGroup}, URL: f.srv.URL, CAFile: f.caFile, ClientCertFile: f.certFile, ClientKeyFile: f.keyFle}
}

func newSet(t *testing.T, f *fakeUpstream, timeout time.Duration) *Set {
	t.Helper()
	s, err := New([]Spec{f.spec()}, timeout, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A forwarded request reaches the upstream as the aggregator's would: over
// TLS with the forwarding certificate (the fake takes no other client) and
// the caller in the X-Remote-* headers; never with a bearer token,
// impersonation headers, or the caller's own credentials or identity
// headers, whatever their case. The answer comes back with its status,
// body and content type, and nothing else of the upstream's headers.
func TestForwardSendsTheCallerAsTheFrontProxyDoes(t *testing.T) {
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
	if h := f.headers()[0]; h.Get("X-Remote-User") != "forwarding-client" || h.Get("Authorization") != "" {
		t.Errorf("discovery was read with %v, want the certificate's user and no token", h)
	}

	req := httptest.NewRequest(http.MethodGet, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps?labelSelector=app%3Dweb", nil)
	req.Header.Set("Authorization", "Bearer the-callers-token")
	req.Header.Set("X-Remote-User", "someone-else")
	req.Header.Set("Impersonate-User", "someone-else")
	// Stored as sent, not canonical: Header.Del would miss these.
	req.Header["impersonate-group"] = []string{"system:masters"}
	req.Header["x-remote-group"] = []string{"system:masters"}
	req.Header["cookie"] = []string{"session=1"}
	req.Header.Set("Accept", "application/json")
	req = req.WithContext(request.WithUser(req.Context(), &user.DefaultInfo{Name: "alice", UID: "u-1",
		Groups: []string{"team-a", user.AllAuthenticated}, Extra: map[string][]string{"scopes.example/x": {"read"}}}))
	rec := httptest.NewRecorder()
	s.Forward(u, CustomGroup, rec, req)

	if rec.Code != http.StatusTeapot || rec.Header().Get("Content-Type") != "application/vnd.test" || rec.Body.String() != "upstream's answer for labelSelector=app%3Dweb" {
		t.Errorf("answer %d %q %q, want the upstream's unchanged", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
	if rec.Header().Get("Set-Cookie") != "" {
		t.Errorf("the upstream's Set-Cookie was passed back")
	}
	hs := f.headers()
	h := hs[len(hs)-1]
	for name, want := range map[string][]string{
		"X-Remote-User":                     {"alice"},
		"X-Remote-Group":                    {"team-a"},
		"X-Remote-Extra-Scopes.example%2Fx": {"read"},
		"Authorization":                     nil,
		"Cookie":                            nil,
		"Impersonate-User":                  nil,
		"Impersonate-Group":                 nil,
		"Impersonate-Uid":                   nil,
		"Accept":                            {"application/json"},
	} {
		if got := h.Values(name); !slices.Equal(got, want) {
			t.Errorf("the upstream got %s: %q, want %q", name, got, want)
		}
	}
	for name := range h {
		if c := http.CanonicalHeaderKey(name); strings.HasPrefix(c, "Impersonate-") || c == "Authorization" || c == "Cookie" {
			t.Errorf("the upstream got %s: %q", name, h[name])
		}
	}

	// Without a user (not through the filters) nothing is forwarded.
	rec = httptest.NewRecorder()
	s.Forward(u, CustomGroup, rec, httptest.NewRequest(http.MethodGet, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("no user: %d, want 401", rec.Code)
	}
}

// A path is forwarded as it was parsed: an encoded slash reaches the
// upstream as a separator, as this adapter's filters read it.
func TestForwardSendsThePathAsParsed(t *testing.T) {
	f := newFakeUpstream(t)
	s := newSet(t, f, 5*time.Second)
	s.Refresh(context.Background())
	req := httptest.NewRequest(http.MethodGet, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods%2F%2A/pa-rps", nil)
	req = req.WithContext(request.WithUser(req.Context(), &user.DefaultInfo{Name: "alice"}))
	s.Forward(s.For(CustomGroup, "pods/pa-rps"), CustomGroup, httptest.NewRecorder(), req)
	f.mu.Lock()
	got := f.paths[len(f.paths)-1]
	f.mu.Unlock()
	if got != "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/%2A/pa-rps" && got != "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps" {
		t.Errorf("the upstream got %s", got)
	}
}

// What a hostile upstream sends is read within bounds: an answer larger
// than MaxAnswerBytes is a 502 naming it, a discovery list larger than
// MaxDiscoveryBytes is refused and the last good list kept.
func TestAnUpstreamsAnswersAreBounded(t *testing.T) {
	f := newFakeUpstream(t)
	s := newSet(t, f, 10*time.Second)
	s.Refresh(context.Background())
	u := s.For(CustomGroup, "pods/pa-rps")
	f.mu.Lock()
	f.answer = bytes.Repeat([]byte("x"), MaxAnswerBytes+1)
	f.mu.Unlock()
	req := httptest.NewRequest(http.MethodGet, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/pa-rps", nil)
	req = req.WithContext(request.WithUser(req.Context(), &user.DefaultInfo{Name: "alice"}))
	rec := httptest.NewRecorder()
	s.Forward(u, CustomGroup, rec, req)
	if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "upstream pa") || rec.Body.Len() > 4096 {
		t.Errorf("an answer of %d bytes: %d, %d bytes back, want a short 502 naming the upstream", MaxAnswerBytes+1, rec.Code, rec.Body.Len())
	}
	f.mu.Lock()
	f.answer = append([]byte(`{"resources":[`), bytes.Repeat([]byte(`{"name":"pods/x","namespaced":true},`), MaxDiscoveryBytes/30)...)
	f.mu.Unlock()
	s.Refresh(context.Background())
	if s.For(CustomGroup, "pods/pa-rps") == nil {
		t.Error("an oversized discovery answer replaced the last good list")
	}
	if err := s.failing["pa "+CustomGroup]; err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("the oversized discovery answer: %v", err)
	}
}

// A forwarding certificate the API server would take as a client's (its
// client CA or front-proxy CA signed it) is refused.
func TestCheckNotTrusted(t *testing.T) {
	f := newFakeUpstream(t)
	s := newSet(t, f, time.Second)
	ownCA, _, _, _ := forwardingCert(t)
	if err := s.CheckNotTrusted(map[string][]byte{"client CA": ownCA, "front-proxy CA": nil}); err != nil {
		t.Errorf("a certificate of a CA of its own: %v", err)
	}
	// The forwarding certificate's own CA, as if the API server trusted it.
	err := s.CheckNotTrusted(map[string][]byte{"client CA": ownCA, "front-proxy CA": f.forwardingCA})
	if err == nil || !strings.Contains(err.Error(), "front-proxy CA") || !strings.Contains(err.Error(), "forwarding-client") {
		t.Errorf("a certificate the API server trusts: %v", err)
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
	_, cert, key, _ := forwardingCert(t)
	tlsFiles := "  caFile: " + ca + "\n  clientCertFile: " + cert + "\n  clientKeyFile: " + key + "\n"
	good := "upstreams:\n- name: pa\n  groups: [custom.metrics.k8s.io]\n  service: {namespace: monitoring, name: prometheus-adapter}\n" + tlsFiles
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
		"upstreams:\n- name: pa\n  groups: [metrics.k8s.io]\n  url: https://x\n  caFile: " + ca + "\n":                  "clientCertFile is required",
		"upstreams:\n- groups: [metrics.k8s.io]\n  url: https://x\n  service: {namespace: a, name: b}\n  caFile: " + ca: "set one of url and service",
		"upstreams:\n- nmae: pa\n": "field nmae not found",
	} {
		if _, err := Load(write(text)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", text, err, want)
		}
	}
}

// Only names a metrics request can have are merged from an upstream's
// discovery into this adapter's.
func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"pods/requests-per-second":         true,
		"deployments.apps/rps":             true,
		"queue_depth":                      true,
		"nodes":                            true,
		"":                                 false,
		"pods/a/b":                         false,
		"pods/a b":                         false,
		"pods/a\nb":                        false,
		`pods/a"}`:                         false,
		"pods/" + strings.Repeat("a", 600): false,
	} {
		if got := validName(name); got != want {
			t.Errorf("validName(%q) = %v, want %v", name, got, want)
		}
	}
}
