// Package backends builds the stores the rules read: the default one, from
// --prometheus-url and its flags, and the named ones of the rules file's
// backends section (each a config.Backend), into a Set of Store, each with
// its own Prometheus client (package promclient): its URL, TLS, credentials,
// headers, verb and timeout. A rule names its store; the request path asks
// the Set for it by name.
//
// A store may take a tenant per namespace (its Tenancy: a header such as
// Cortex's X-Scope-OrgID, or a query parameter such as prom-label-proxy's,
// from a template over the Namespace's name, labels and annotations). Tenants
// answers the tenant of a namespace on a store, and every tenant a store has
// for discovery, bounded in count.
//
// It builds and checks clients; it sends nothing until a query does.
package backends

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	promconfig "github.com/prometheus/common/config"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
)

// Store is one store and its client.
type Store struct {
	// Name is what rules call it; config.DefaultBackend for the flags'.
	Name string
	// URL is its base URL without credentials, for messages and logs.
	URL    string
	Client *promclient.Client
	// Teams is set when MetricRules may name it.
	Teams bool
	// Tenancy is set when each request goes as the tenant of its
	// namespace.
	Tenancy *Tenancy
}

// Set is the stores, by name.
type Set struct {
	stores map[string]*Store
	names  []string
}

// New builds the default store from def (the flags, named
// config.DefaultBackend) and one per spec of the rules file. where names a
// spec's field in errors ("file:line: backends[1].url"). Every problem is
// reported.
func New(def config.Backend, specs []config.Backend, where func(i int, field string) string) (*Set, error) {
	s := &Set{stores: map[string]*Store{}}
	var errs []error
	add := func(spec config.Backend, fail func(field, format string, args ...any)) {
		cfg, err := ClientConfig(spec)
		if err != nil {
			fail("", "%v", err)
			return
		}
		var tenancy *Tenancy
		if spec.Tenant != nil {
			if tenancy, err = newTenancy(*spec.Tenant, spec.Headers); err != nil {
				fail("tenant", "%v", err)
				return
			}
			cfg.TenantHeader, cfg.TenantParam = tenancy.Header, tenancy.QueryParam
		}
		client, err := promclient.New(cfg)
		if err != nil {
			fail("url", "%v", err)
			return
		}
		s.stores[spec.Name] = &Store{Name: spec.Name, URL: redact(spec.URL), Client: client, Teams: spec.Teams, Tenancy: tenancy}
		s.names = append(s.names, spec.Name)
	}
	def.Name = config.DefaultBackend
	add(def, func(_, format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) })
	for i, spec := range specs {
		fail := func(field, format string, args ...any) {
			at := where(i, field)
			if field == "" {
				at = where(i, "name")
			}
			errs = append(errs, fmt.Errorf("%s: %s", at, fmt.Sprintf(format, args...)))
		}
		switch {
		case spec.Name == config.DefaultBackend:
			fail("name", "%q names the store of --prometheus-url: leave backend out of a rule to read it", spec.Name)
			continue
		case len(validation.IsDNS1123Label(spec.Name)) > 0:
			fail("name", "%q is not a DNS label (lower case letters, digits and -)", spec.Name)
			continue
		case slices.Contains(s.names, spec.Name):
			fail("name", "%q is used twice", spec.Name)
			continue
		}
		if spec.Timeout == 0 {
			spec.Timeout = def.Timeout
		}
		add(spec, fail)
	}
	return s, errors.Join(errs...)
}

// Store returns the store a rule names ("" is the default), or nil.
func (s *Set) Store(name string) *Store {
	if name == "" {
		name = config.DefaultBackend
	}
	return s.stores[name]
}

// Names lists the stores, the default first, then in the file's order.
func (s *Set) Names() []string { return slices.Clone(s.names) }

// Querier returns the client of the store a rule names ("" is the
// default), or nil.
func (s *Set) Querier(name string) promclient.Querier {
	if st := s.Store(name); st != nil {
		return st.Client
	}
	return nil
}

// ClientConfig builds a store's client configuration: its TLS, its
// credentials (a bearer token file read on every request, basic auth with a
// password file, or a kubeconfig's, or the pod's service account), its
// headers (ones the client sets itself, such as Authorization, are
// refused), its verb and its timeout.
func ClientConfig(b config.Backend) (promclient.Config, error) {
	u, err := url.Parse(b.URL)
	switch {
	case err != nil:
		return promclient.Config{}, fmt.Errorf("url %q: %w", redact(b.URL), err)
	case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return promclient.Config{}, fmt.Errorf("url %q must be an absolute http or https URL", redact(b.URL))
	}
	verb := strings.ToUpper(b.Verb)
	switch verb {
	case "":
		verb = http.MethodPost
	case http.MethodGet, http.MethodPost:
	default:
		return promclient.Config{}, fmt.Errorf("verb must be GET or POST, got %q", b.Verb)
	}
	a := b.Auth
	kube := a.Kubeconfig != "" || a.InCluster
	n := 0
	for _, set := range []bool{a.BearerTokenFile != "", a.BasicAuth != nil, kube} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return promclient.Config{}, errors.New("auth takes one of bearerTokenFile, basicAuth, and kubeconfig or inCluster")
	case a.Kubeconfig != "" && a.InCluster:
		return promclient.Config{}, errors.New("auth: kubeconfig and inCluster exclude each other")
	case kube && (b.TLS != config.BackendTLS{}):
		return promclient.Config{}, errors.New("auth: a kubeconfig (or inCluster) brings its own TLS settings: leave tls out")
	case a.BasicAuth != nil && (a.BasicAuth.Username == "" || a.BasicAuth.PasswordFile == ""):
		return promclient.Config{}, errors.New("auth.basicAuth needs username and passwordFile")
	case (b.TLS.CertFile == "") != (b.TLS.KeyFile == ""):
		return promclient.Config{}, errors.New("tls.certFile and tls.keyFile go together")
	}
	var rt http.RoundTripper
	if kube {
		var cfg *rest.Config
		if a.InCluster {
			cfg, err = rest.InClusterConfig()
		} else {
			rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: a.Kubeconfig}
			cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		}
		if err != nil {
			return promclient.Config{}, fmt.Errorf("loading credentials: %w", err)
		}
		if rt, err = rest.TransportFor(cfg); err != nil {
			return promclient.Config{}, fmt.Errorf("building a transport from the kubeconfig: %w", err)
		}
	} else {
		hc := promconfig.HTTPClientConfig{
			TLSConfig: promconfig.TLSConfig{
				CAFile: b.TLS.CAFile, CertFile: b.TLS.CertFile, KeyFile: b.TLS.KeyFile, InsecureSkipVerify: b.TLS.InsecureSkipVerify,
			},
			FollowRedirects: true,
			EnableHTTP2:     true,
			// As the Kubernetes client does: HTTP(S)_PROXY and NO_PROXY
			// apply (never to loopback).
			ProxyConfig: promconfig.ProxyConfig{ProxyFromEnvironment: true},
		}
		if a.BearerTokenFile != "" {
			hc.Authorization = &promconfig.Authorization{Type: "Bearer", CredentialsFile: a.BearerTokenFile}
		}
		if a.BasicAuth != nil {
			hc.BasicAuth = &promconfig.BasicAuth{Username: a.BasicAuth.Username, PasswordFile: a.BasicAuth.PasswordFile}
		}
		if err := hc.Validate(); err != nil {
			return promclient.Config{}, err
		}
		if rt, err = promconfig.NewRoundTripperFromConfig(hc, "prometheus"); err != nil {
			return promclient.Config{}, fmt.Errorf("building the transport: %w", err)
		}
	}
	if len(b.Headers) > 0 {
		h := &promconfig.Headers{Headers: map[string]promconfig.Header{}}
		for name, value := range b.Headers {
			if strings.ContainsAny(name, " :\t\r\n") || strings.ContainsAny(value, "\r\n") {
				return promclient.Config{}, fmt.Errorf("headers: %q is not a valid HTTP header", name)
			}
			canonical := http.CanonicalHeaderKey(name)
			hd := h.Headers[canonical]
			hd.Values = append(hd.Values, value)
			h.Headers[canonical] = hd
		}
		if err := h.Validate(); err != nil {
			return promclient.Config{}, fmt.Errorf("headers: %w", err)
		}
		rt = promconfig.NewHeadersRoundTripper(h, rt)
	}
	timeout := time.Duration(b.Timeout)
	if timeout < 0 {
		return promclient.Config{}, fmt.Errorf("timeout must be positive, got %s", b.Timeout)
	}
	if b.MaxQueryLength < 0 {
		return promclient.Config{}, fmt.Errorf("maxQueryLength must not be negative, got %d", b.MaxQueryLength)
	}
	onWarning := promclient.OnWarning(b.OnWarning)
	switch onWarning {
	case "", promclient.RefuseWarnings, promclient.ServeWarnings:
	default:
		return promclient.Config{}, fmt.Errorf("onWarning must be %s (the default) or %s, got %q", promclient.RefuseWarnings, promclient.ServeWarnings, b.OnWarning)
	}
	return promclient.Config{URL: b.URL, RoundTripper: rt, Method: promclient.Method(verb), Timeout: timeout, MaxQueryLength: b.MaxQueryLength,
		OnWarning: onWarning}, nil
}

// redact is u with any password replaced by "xxxxx".
func redact(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return parsed.Redacted()
}
