// Package upstream lets this adapter share the metrics API groups with
// other metrics servers: prometheus-adapter during a migration, KEDA for
// the external metrics it owns, metrics-server for resource metrics. A Set
// holds the Upstream of each Spec of the --upstreams File. The
// aggregator sends each API group to one APIService; pointed at this
// adapter, it serves what its rules know and forwards the rest, in order,
// to the upstreams that list it.
//
// An upstream is another metrics server's HTTPS endpoint (its Service, or
// a URL) with the CA of its serving certificate. Its discovery (the
// resources each group lists) is read in the background, every interval,
// and kept when a refresh fails: a slow or stopped upstream costs only its
// own metrics, never this adapter's discovery or its own metrics.
//
// A forwarded request is sent as the aggregator sends it to an extension
// API server: over TLS with a client certificate of the adapter's own (the
// "forwarding certificate", from a CA the upstream trusts as its
// requestheader client CA and the API server does not), with the caller's
// identity in X-Remote-User, X-Remote-Group and X-Remote-Extra- headers.
// Nothing an upstream receives authenticates anywhere else: no bearer
// token, no impersonation headers, and a client certificate proves itself
// only with its key, which never leaves the adapter. The adapter needs no
// impersonate permission. The request was authenticated and authorized
// by this adapter first, with the same attributes the aggregator's request
// carries: a caller who may not read a metric never reaches the upstream.
//
// What an upstream sends back is read within bounds (a discovery list, an
// answer), and the answer is passed back with its status, body and content
// type. The package does not decide what this adapter serves itself;
// package adapter does, and asks For which upstream serves the rest.
package upstream

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sync/errgroup"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// The metrics API groups, and the version whose discovery lists an
// upstream's resources.
const (
	CustomGroup   = "custom.metrics.k8s.io"
	ExternalGroup = "external.metrics.k8s.io"
	ResourceGroup = "metrics.k8s.io"
)

var discoveryVersion = map[string]string{CustomGroup: "v1beta2", ExternalGroup: "v1beta1", ResourceGroup: "v1beta1"}

// File is the --upstreams file.
type File struct {
	// Upstreams are asked in this order.
	Upstreams []Spec `yaml:"upstreams"`
}

// Spec is one upstream.
type Spec struct {
	// Name names the upstream in errors, logs and the adapter's metrics.
	Name string `yaml:"name"`
	// Groups are the API groups forwarded to it (custom.metrics.k8s.io,
	// external.metrics.k8s.io, metrics.k8s.io).
	Groups []string `yaml:"groups"`
	// URL is its HTTPS base URL; or Service, the Service of its
	// APIService, reached at https://NAME.NAMESPACE.svc:PORT.
	URL     string   `yaml:"url,omitempty"`
	Service *Service `yaml:"service,omitempty"`
	// CAFile holds the CA certificates its serving certificate is verified
	// against (its APIService's caBundle).
	CAFile string `yaml:"caFile"`
	// ClientCertFile and ClientKeyFile are the forwarding certificate and
	// its key: the upstream trusts their CA as its requestheader client CA
	// (--requestheader-client-ca-file), and the API server must not. They
	// are read again when they change.
	ClientCertFile string `yaml:"clientCertFile"`
	ClientKeyFile  string `yaml:"clientKeyFile"`
}

// Service is a Service in the cluster.
type Service struct {
	Namespace string `yaml:"namespace"`
	Name      string `yaml:"name"`
	Port      int32  `yaml:"port,omitempty"`
}

// Load reads and checks an upstreams file; every problem is reported.
func Load(path string) ([]Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the upstreams file: %w", err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var errs []error
	names := map[string]bool{}
	for i, s := range f.Upstreams {
		where := fmt.Sprintf("%s: upstreams[%d]", path, i)
		switch {
		case s.Name == "":
			errs = append(errs, fmt.Errorf("%s: name is required", where))
		case names[s.Name]:
			errs = append(errs, fmt.Errorf("%s: name %q is used twice", where, s.Name))
		}
		names[s.Name] = true
		if len(s.Groups) == 0 {
			errs = append(errs, fmt.Errorf("%s: groups is required (%s, %s, %s)", where, CustomGroup, ExternalGroup, ResourceGroup))
		}
		for _, g := range s.Groups {
			if _, ok := discoveryVersion[g]; !ok {
				errs = append(errs, fmt.Errorf("%s: groups: %q is not a metrics API group (%s, %s, %s)", where, g, CustomGroup, ExternalGroup, ResourceGroup))
			}
		}
		if _, err := s.base(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
		for _, f := range []struct{ name, path, why string }{
			{"caFile", s.CAFile, "the upstream's serving certificate is verified"},
			{"clientCertFile", s.ClientCertFile, "the adapter presents it to the upstream, which trusts its CA as its requestheader client CA (docs/install.md, \"Share the APIService\")"},
			{"clientKeyFile", s.ClientKeyFile, "the key of clientCertFile"},
		} {
			if f.path == "" {
				errs = append(errs, fmt.Errorf("%s: %s is required: %s", where, f.name, f.why))
			} else if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", where, f.name, err))
			}
		}
	}
	if len(f.Upstreams) == 0 {
		errs = append(errs, fmt.Errorf("%s: no upstreams", path))
	}
	return f.Upstreams, errors.Join(errs...)
}

// base is the upstream's base URL.
func (s Spec) base() (*url.URL, error) {
	switch {
	case (s.URL == "") == (s.Service == nil):
		return nil, errors.New("set one of url and service")
	case s.Service != nil:
		if s.Service.Namespace == "" || s.Service.Name == "" {
			return nil, errors.New("service: namespace and name are required")
		}
		port := s.Service.Port
		if port == 0 {
			port = 443
		}
		return &url.URL{Scheme: "https", Host: fmt.Sprintf("%s.%s.svc:%d", s.Service.Name, s.Service.Namespace, port)}, nil
	}
	u, err := url.Parse(s.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("url %q: want https://HOST[:PORT]", s.URL)
	}
	return u, nil
}

// Upstream is one other metrics server.
type Upstream struct {
	Name   string
	URL    *url.URL
	groups []string
	client *http.Client
	// cert is the forwarding certificate, as it was at start
	// (CheckNotTrusted); its common name is the user the adapter asks as
	// itself (discovery).
	cert *x509.Certificate
	// lists holds, per group, the last good discovery.
	lists map[string]*atomic.Pointer[listing]
}

type listing struct {
	resources []metav1.APIResource
}

// Set is the upstreams, in order.
type Set struct {
	ups      []*Upstream
	timeout  time.Duration
	interval time.Duration
	mu       sync.Mutex
	failing  map[string]error // "name group" -> the last refresh's error
}

// New builds the upstreams. Each is reached over TLS with its spec's CA
// and forwarding certificate, and nothing else: no credential of the
// adapter's own. timeout bounds a forwarded request and a discovery
// refresh; interval is how often discovery is refreshed.
func New(specs []Spec, timeout, interval time.Duration) (*Set, error) {
	s := &Set{timeout: timeout, interval: interval, failing: map[string]error{}}
	for _, spec := range specs {
		base, err := spec.base()
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", spec.Name, err)
		}
		// client-go's transport reads the certificate and key again
		// when they change (a rotated Secret).
		rt, err := rest.TransportFor(&rest.Config{Host: base.String(), TLSClientConfig: rest.TLSClientConfig{
			CAFile: spec.CAFile, CertFile: spec.ClientCertFile, KeyFile: spec.ClientKeyFile,
		}})
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", spec.Name, err)
		}
		cert, err := readCert(spec.ClientCertFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: clientCertFile: %w", spec.Name, err)
		}
		u := &Upstream{Name: spec.Name, URL: base, groups: spec.Groups, client: &http.Client{Transport: rt},
			cert: cert, lists: map[string]*atomic.Pointer[listing]{}}
		for _, g := range spec.Groups {
			u.lists[g] = &atomic.Pointer[listing]{}
		}
		s.ups = append(s.ups, u)
	}
	return s, nil
}

// CheckNotTrusted refuses a forwarding certificate that the API server
// would take as a client's: one its client CA or its front-proxy CA
// (trusted, the API server's requestheader CA) has signed. Whoever held
// its key could then act as anyone. caBundles are those CAs' PEM bundles
// (empty ones are skipped).
func (s *Set) CheckNotTrusted(caBundles map[string][]byte) error {
	var errs []error
	for _, u := range s.ups {
		cert := u.cert
		for _, name := range slices.Sorted(maps.Keys(caBundles)) {
			pool := x509.NewCertPool()
			if len(caBundles[name]) == 0 || !pool.AppendCertsFromPEM(caBundles[name]) {
				continue
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
				errs = append(errs, fmt.Errorf("upstream %s: clientCertFile (CN %q) is signed by the API server's %s: it would authenticate to the API server, "+
					"so it must come from a CA of its own that only the upstreams trust (hack/gen-forwarding-cert.sh)", u.Name, cert.Subject.CommonName, name))
			}
		}
	}
	return errors.Join(errs...)
}

// readCert reads the first certificate of a PEM file.
func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return x509.ParseCertificate(block.Bytes)
}

// asAdapter writes the adapter's own identity, for what it asks of u as
// itself (discovery): the forwarding certificate's common name, which the
// upstream takes as an authenticated user.
func (u *Upstream) asAdapter(h http.Header) {
	h.Set(RemoteUserHeader, u.cert.Subject.CommonName)
}

// Run refreshes every upstream's discovery now and every interval, until
// ctx is done.
func (s *Set) Run(ctx context.Context) {
	wait.UntilWithContext(ctx, s.Refresh, s.interval)
}

// Refresh reads every upstream's discovery, side by side, each within the
// timeout. A failed read keeps the last good one.
func (s *Set) Refresh(ctx context.Context) {
	var g errgroup.Group
	for _, u := range s.ups {
		for _, group := range u.groups {
			g.Go(func() error {
				rctx, cancel := context.WithTimeout(ctx, s.timeout)
				defer cancel()
				err := u.discover(rctx, group)
				s.record(u, group, err)
				return nil
			})
		}
	}
	_ = g.Wait()
}

// record logs a refresh's outcome when it changes, and counts it.
func (s *Set) record(u *Upstream, group string, err error) {
	observeDiscovery(u.Name, group, err)
	key := u.Name + " " + group
	s.mu.Lock()
	prev, failed := s.failing[key]
	if err != nil {
		s.failing[key] = err
	} else {
		delete(s.failing, key)
	}
	s.mu.Unlock()
	switch {
	case err != nil && (!failed || prev.Error() != err.Error()):
		klog.ErrorS(err, "Reading an upstream's discovery failed; its last good list is kept", "upstream", u.Name, "group", group)
	case err == nil && failed:
		klog.InfoS("Reading an upstream's discovery works again", "upstream", u.Name, "group", group)
	}
}

// discover reads one group's discovery.
func (u *Upstream) discover(ctx context.Context, group string) error {
	path := "/apis/" + group + "/" + discoveryVersion[group]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL.JoinPath(path).String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	u.asAdapter(req.Header)
	resp, err := u.client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	var rl metav1.APIResourceList
	body, err := readAtMost(resp.Body, MaxDiscoveryBytes)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if err := json.Unmarshal(body, &rl); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if len(rl.APIResources) > MaxResources {
		return fmt.Errorf("GET %s: %d resources, more than the %d an upstream's discovery may list", path, len(rl.APIResources), MaxResources)
	}
	// Only names a metrics request can have are merged into this
	// adapter's discovery; the rest of each entry is rebuilt, not copied.
	kept := make([]metav1.APIResource, 0, len(rl.APIResources))
	for _, r := range rl.APIResources {
		if validName(r.Name) {
			kept = append(kept, metav1.APIResource{Name: r.Name, Namespaced: r.Namespaced, Kind: r.Kind, Verbs: metav1.Verbs{"get"}})
		}
	}
	if dropped := len(rl.APIResources) - len(kept); dropped > 0 {
		klog.V(2).InfoS("Dropped resources with names no metrics request has from an upstream's discovery", "upstream", u.Name, "group", group, "dropped", dropped)
	}
	old := u.lists[group].Swap(&listing{resources: kept})
	if old == nil || len(old.resources) != len(rl.APIResources) {
		klog.InfoS("Read an upstream's discovery", "upstream", u.Name, "group", group, "resources", len(rl.APIResources))
	}
	return nil
}

// validName reports whether name is one a metrics API's discovery can
// list: "pods", "pods/requests-per-second", "deployments.apps/x", an
// external metric's name; at most 512 bytes of letters, digits and
// . _ : - /, with at most one /.
func validName(name string) bool {
	if name == "" || len(name) > 512 || strings.Count(name, "/") > 1 {
		return false
	}
	return strings.IndexFunc(name, func(c rune) bool {
		return !strings.ContainsRune("._:-/", c) && (c < '0' || c > '9') && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z')
	}) < 0
}

// Bounds on what an upstream sends.
const (
	// MaxDiscoveryBytes bounds a discovery answer: 10,000 metrics fit
	// several times over.
	MaxDiscoveryBytes = 8 << 20
	// MaxResources is how many resources an upstream's discovery of one
	// group may list.
	MaxResources = 20000
	// MaxAnswerBytes bounds a forwarded answer: a 10,000-pod answer is a
	// few megabytes.
	MaxAnswerBytes = 32 << 20
)

// errTooLarge is an answer longer than its bound.
var errTooLarge = errors.New("answer too large")

// readAtMost reads r to its end, failing past max bytes.
func readAtMost(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: more than %d bytes", errTooLarge, max)
	}
	return b, nil
}

// Resources lists what the upstreams serve of group, in their order: each
// resource once, from the first upstream listing it.
func (s *Set) Resources(group string) []metav1.APIResource {
	var out []metav1.APIResource
	seen := map[string]bool{}
	for _, u := range s.ups {
		l := u.list(group)
		for _, r := range l {
			if !seen[r.Name] {
				seen[r.Name] = true
				out = append(out, r)
			}
		}
	}
	return out
}

func (u *Upstream) list(group string) []metav1.APIResource {
	p, ok := u.lists[group]
	if !ok {
		return nil
	}
	if l := p.Load(); l != nil {
		return l.resources
	}
	return nil
}

// For returns the first upstream whose discovery of group lists the
// resource named name (as discovery names it: "pods/requests-per-second",
// an external metric's name, "pods"), or nil.
func (s *Set) For(group, name string) *Upstream {
	for _, u := range s.ups {
		if slices.ContainsFunc(u.list(group), func(r metav1.APIResource) bool { return r.Name == name }) {
			return u
		}
	}
	return nil
}

// ForGroup returns the first upstream of group, or nil.
func (s *Set) ForGroup(group string) *Upstream {
	for _, u := range s.ups {
		if slices.Contains(u.groups, group) {
			return u
		}
	}
	return nil
}

// Timeout is how long a forwarded request may take.
func (s *Set) Timeout() time.Duration { return s.timeout }

// Empty reports whether there are no upstreams.
func (s *Set) Empty() bool { return s == nil || len(s.ups) == 0 }
