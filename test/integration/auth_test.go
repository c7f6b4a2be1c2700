package integration

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promconfig "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/spf13/pflag"
	"golang.org/x/crypto/bcrypt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/adapter"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/externalmetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// The Prometheus access flags against real Prometheus servers: one that
// serves TLS and requires a client certificate its CA signed, one that
// also requires basic auth, and a bearer-token proxy (Prometheus behind an
// authenticating gateway, as with Mimir, Thanos or kube-rbac-proxy) in
// front of the first. Every client is built as the adapter builds it: the
// flags parsed, validated, turned into a promclient.Config.

const (
	// upQuery is each Prometheus' own target, which it scrapes over the
	// TLS, client certificate and basic auth it requires of everyone.
	upQuery = `up{job="prometheus"}`

	basicUser     = "adapter"
	basicPassword = "correct horse battery staple"

	tenantHeader = "X-Scope-OrgID"
	tenant       = "team-a"
	// proxyPrefix is where the proxy serves Prometheus' API, so
	// --prometheus-url carries a path, as for Mimir or Thanos.
	proxyPrefix = "/prometheus"

	// refusedWithin is how fast a refused credential must fail: at once,
	// not at --prometheus-timeout (10s in these tests).
	refusedWithin = 3 * time.Second

	// accessRules serve Prometheus' own up series as the external metric
	// prometheus_up, so the tests can see what the metrics API answers.
	accessRules = `externalRules:
- seriesQuery: 'up{job="prometheus"}'
  resources:
    namespaced: false
  name:
    matches: ^up$
    as: prometheus_up
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
`
)

var prometheusUp = provider.ExternalMetricInfo{Metric: "prometheus_up"}

// How a refusal by Prometheus or the proxy must be named: with its status
// (a bare "401" could be part of a port in a URL).
const (
	unauthorized = "client error: 401"
	forbidden    = "client error: 403"
)

func TestAuthPrometheusAccessFlags(t *testing.T) {
	g, dir := processGroup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	pki, err := localstack.GenerateTLSFiles(filepath.Join(dir, "pki"), "prometheus")
	if err != nil {
		t.Fatal(err)
	}
	// A CA of its own, with its own client certificate: trusted by no one.
	other, err := localstack.GenerateTLSFiles(filepath.Join(dir, "pki"), "other")
	if err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(basicPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	mtls := startTLSPrometheus(ctx, t, g, dir, "prometheus-mtls", pki, "")
	basic := startTLSPrometheus(ctx, t, g, dir, "prometheus-basic", pki, string(hash))

	mtlsFlags := []string{
		"--prometheus-url=" + mtls.URL,
		"--prometheus-ca-file=" + pki.CA,
		"--prometheus-client-tls-cert-file=" + pki.ClientCert,
		"--prometheus-client-tls-key-file=" + pki.ClientKey,
	}
	mtlsClient := adapterClient(t, mtlsFlags...)
	goodKubeconfig := writeKubeconfig(t, dir, "good", basic.URL, pki, basicUser, basicPassword)
	basicClient := adapterClient(t, "--prometheus-url="+basic.URL, "--prometheus-auth-config="+goodKubeconfig)
	// Both servers have scraped themselves, over their own TLS, client
	// certificate and basic auth, before any test looks.
	waitForUp(ctx, t, mtlsClient)
	waitForUp(ctx, t, basicClient)
	mtlsInstance := strings.TrimPrefix(mtls.URL, "https://")
	basicInstance := strings.TrimPrefix(basic.URL, "https://")

	upstreamTLS, err := pki.ClientTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	serverToken := filepath.Join(dir, "proxy-token")
	writeFileAtomic(t, serverToken, "token-1")
	proxy := startBearerProxy(t, mtls.URL, upstreamTLS, serverToken, tenant)

	t.Run("CAFileAndClientCert", func(t *testing.T) {
		checkServes(ctx, t, mtlsClient, mtlsInstance)
		checkProviderServes(ctx, t, externalProvider(ctx, t, mtlsClient, mtlsClient))
	})

	t.Run("TLSClientCertMissing", func(t *testing.T) {
		c := adapterClient(t, "--prometheus-url="+mtls.URL, "--prometheus-ca-file="+pki.CA, "--prometheus-timeout=10s")
		checkRefused(ctx, t, c, externalProvider(ctx, t, mtlsClient, c), "certificate required", certRefusedTransient...)
	})

	t.Run("TLSClientCertFromUnknownCA", func(t *testing.T) {
		c := adapterClient(t, "--prometheus-url="+mtls.URL, "--prometheus-ca-file="+pki.CA,
			"--prometheus-client-tls-cert-file="+other.ClientCert, "--prometheus-client-tls-key-file="+other.ClientKey,
			"--prometheus-timeout=10s")
		checkRefused(ctx, t, c, externalProvider(ctx, t, mtlsClient, c), "unknown certificate authority", certRefusedTransient...)
	})

	t.Run("TLSInsecureSkipVerify", func(t *testing.T) {
		c := adapterClient(t, "--prometheus-url="+mtls.URL, "--prometheus-insecure-skip-tls-verify",
			"--prometheus-client-tls-cert-file="+pki.ClientCert, "--prometheus-client-tls-key-file="+pki.ClientKey)
		checkServes(ctx, t, c, mtlsInstance)
	})

	t.Run("TLSServerCertNotTrusted", func(t *testing.T) {
		clientCert := []string{"--prometheus-client-tls-cert-file=" + pki.ClientCert, "--prometheus-client-tls-key-file=" + pki.ClientKey}
		// Neither a CA nor --prometheus-insecure-skip-tls-verify: the
		// system's roots do not know the local CA.
		c := adapterClient(t, append([]string{"--prometheus-url=" + mtls.URL, "--prometheus-timeout=10s"}, clientCert...)...)
		checkRefused(ctx, t, c, externalProvider(ctx, t, mtlsClient, c), "x509: certificate signed by unknown authority")
		// A CA file, but the wrong CA.
		c = adapterClient(t, append([]string{"--prometheus-url=" + mtls.URL, "--prometheus-timeout=10s", "--prometheus-ca-file=" + other.CA}, clientCert...)...)
		checkRefused(ctx, t, c, externalProvider(ctx, t, mtlsClient, c), "x509: certificate signed by unknown authority")
	})

	t.Run("TLSCAFileReloaded", func(t *testing.T) {
		// The CA file holds the wrong CA, then the right one: the same
		// client, not rebuilt, trusts Prometheus with its next request.
		caFile := filepath.Join(dir, "reloaded-ca.crt")
		copyFile(t, other.CA, caFile)
		c := adapterClient(t, "--prometheus-url="+mtls.URL, "--prometheus-ca-file="+caFile, "--prometheus-timeout=10s",
			"--prometheus-client-tls-cert-file="+pki.ClientCert, "--prometheus-client-tls-key-file="+pki.ClientKey)
		checkRefused(ctx, t, c, externalProvider(ctx, t, mtlsClient, c), "x509: certificate signed by unknown authority")
		copyFile(t, pki.CA, caFile)
		checkServes(ctx, t, c, mtlsInstance)
	})

	t.Run("AuthConfigBasicAuth", func(t *testing.T) {
		checkServes(ctx, t, basicClient, basicInstance)
		checkProviderServes(ctx, t, externalProvider(ctx, t, basicClient, basicClient))

		// The server does check the password: TLS and a client
		// certificate alone are refused...
		noPassword := adapterClient(t, "--prometheus-url="+basic.URL, "--prometheus-ca-file="+pki.CA,
			"--prometheus-client-tls-cert-file="+pki.ClientCert, "--prometheus-client-tls-key-file="+pki.ClientKey,
			"--prometheus-timeout=10s")
		checkRefused(ctx, t, noPassword, externalProvider(ctx, t, basicClient, noPassword), unauthorized)
		// ... and so is a wrong password.
		wrong := writeKubeconfig(t, dir, "wrong-password", basic.URL, pki, basicUser, "wrong password")
		c := adapterClient(t, "--prometheus-url="+basic.URL, "--prometheus-auth-config="+wrong, "--prometheus-timeout=10s")
		checkRefused(ctx, t, c, externalProvider(ctx, t, basicClient, c), unauthorized)
	})

	// shareToken makes token the one the proxy accepts and writes it to a
	// new token file for the adapter, whose path it returns.
	shareToken := func(t *testing.T, name, token string) string {
		t.Helper()
		writeFileAtomic(t, serverToken, token)
		path := filepath.Join(dir, name)
		writeFileAtomic(t, path, token)
		return path
	}
	// viaProxy builds an adapter client that reaches Prometheus through
	// the proxy with tokenFile and the tenant's header.
	viaProxy := func(t *testing.T, tokenFile string, extra ...string) *promclient.Client {
		t.Helper()
		return adapterClient(t, append([]string{"--prometheus-url=" + proxy.URL, "--prometheus-token-file=" + tokenFile,
			"--prometheus-header=" + tenantHeader + "=" + tenant}, extra...)...)
	}

	t.Run("TokenFileRotation", func(t *testing.T) {
		clientToken := shareToken(t, "adapter-token", "token-1")
		c := viaProxy(t, clientToken, "--prometheus-timeout=10s")
		ep := externalProvider(ctx, t, c, c)
		proxy.take()
		checkServes(ctx, t, c, mtlsInstance)
		checkProviderServes(ctx, t, ep)
		proxy.expectTokens(t, "token-1")

		// The server rotates first: the adapter's token is now the old
		// one, and the proxy refuses it.
		writeFileAtomic(t, serverToken, "token-2")
		checkRefused(ctx, t, c, ep, unauthorized)
		if code := proxy.get(t, "Bearer token-1", tenant); code != http.StatusUnauthorized {
			t.Errorf("the old token: proxy answered %d, want 401", code)
		}
		// The token file is rotated: the same client, not rebuilt, sends
		// the new token with its next request.
		writeFileAtomic(t, clientToken, "token-2")
		proxy.take()
		checkServes(ctx, t, c, mtlsInstance)
		checkProviderServes(ctx, t, ep)
		proxy.expectTokens(t, "token-2")

		// No token file at all: refused too.
		none := adapterClient(t, "--prometheus-url="+proxy.URL, "--prometheus-header="+tenantHeader+"="+tenant, "--prometheus-timeout=10s")
		checkRefused(ctx, t, none, externalProvider(ctx, t, c, none), unauthorized)
	})

	t.Run("HeaderTenant", func(t *testing.T) {
		clientToken := shareToken(t, "tenant-token", "token-h")
		flags := []string{"--prometheus-url=" + proxy.URL, "--prometheus-token-file=" + clientToken, "--prometheus-timeout=10s"}
		good := adapterClient(t, append(flags, "--prometheus-header="+tenantHeader+"="+tenant, "--prometheus-header=X-Extra=one")...)
		proxy.take()
		checkServes(ctx, t, good, mtlsInstance)
		for _, r := range proxy.take() {
			if r.Tenant != tenant || r.Extra != "one" {
				t.Errorf("%s %s reached Prometheus with %s %q and X-Extra %q, want %q and %q", r.Method, r.Path, tenantHeader, r.Tenant, r.Extra, tenant, "one")
			}
		}

		wrong := adapterClient(t, append(flags, "--prometheus-header="+tenantHeader+"=team-b")...)
		checkRefused(ctx, t, wrong, externalProvider(ctx, t, good, wrong), forbidden)
		missing := adapterClient(t, flags...)
		checkRefused(ctx, t, missing, externalProvider(ctx, t, good, missing), forbidden)
	})

	t.Run("VerbGETAndPOST", func(t *testing.T) {
		clientToken := shareToken(t, "verb-token", "token-v")
		for _, verb := range []string{http.MethodGet, http.MethodPost} {
			c := viaProxy(t, clientToken, "--prometheus-verb="+verb)
			proxy.take()
			checkServes(ctx, t, c, mtlsInstance)
			got := proxy.take()
			paths := map[string]bool{}
			for _, r := range got {
				paths[r.Path] = true
				if r.Method != verb {
					t.Errorf("--prometheus-verb=%s: %s reached Prometheus as %s", verb, r.Path, r.Method)
				}
			}
			if !paths["/api/v1/query"] || !paths["/api/v1/series"] {
				t.Errorf("--prometheus-verb=%s: the proxy forwarded %+v, want a query and a series listing", verb, got)
			}
		}
	})

	t.Run("Timeout", func(t *testing.T) {
		c := viaProxy(t, shareToken(t, "timeout-token", "token-t"), "--prometheus-timeout=500ms")
		ep := externalProvider(ctx, t, c, c)
		proxy.hold.Store(true)
		defer proxy.hold.Store(false)
		start := time.Now()
		_, err := ep.GetExternalMetric(ctx, "default", labels.Everything(), prometheusUp)
		elapsed := time.Since(start)
		if !apierrors.IsTimeout(err) {
			t.Errorf("a Prometheus that does not answer within --prometheus-timeout: error %v, want 504", err)
		}
		// The timeout starts after start: giving up sooner than 500ms
		// would be another cause, whatever the machine's load.
		if elapsed < 500*time.Millisecond || elapsed > refusedWithin {
			t.Errorf("gave up after %v, want about the 500ms of --prometheus-timeout", elapsed)
		}
		// A series listing is bounded by its caller's deadline (discovery's
		// --discovery-timeout), not by --prometheus-timeout: listings are
		// slower than queries on a large Prometheus.
		// The deadline is set after start, so it cannot pass sooner than
		// 1.5s after it, however busy the machine.
		start = time.Now()
		lctx, lcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer lcancel()
		_, err = c.Series(lctx, []string{upQuery}, time.Now().Add(-time.Minute), time.Now())
		elapsed = time.Since(start)
		if promclient.Classify(err) != promclient.Timeout || elapsed < 1500*time.Millisecond || elapsed > refusedWithin {
			t.Errorf("series listing: %v after %v, want a timeout at its caller's 1.5s deadline, not --prometheus-timeout's 500ms", err, elapsed)
		}
	})
}

// adapterClient builds a Prometheus client from the adapter's flags as the
// adapter does: parsed, validated, PrometheusClientConfig, promclient.New.
func adapterClient(t *testing.T, args ...string) *promclient.Client {
	t.Helper()
	o := adapter.NewOptions()
	fs := pflag.NewFlagSet("adapter", pflag.ContinueOnError)
	o.AddFlags(fs, fs, fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	if errs := o.Validate(); len(errs) > 0 {
		t.Fatalf("flags %q: %v", args, errs)
	}
	cfg, err := o.PrometheusClientConfig()
	if err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	c, err := promclient.New(cfg)
	if err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	return c
}

// startTLSPrometheus starts a Prometheus that serves HTTPS with a
// certificate of pki's CA and requires a client certificate of that CA,
// and, when bcryptHash is set, basic auth as basicUser. It scrapes itself
// with the same credentials.
func startTLSPrometheus(ctx context.Context, t *testing.T, g *localstack.Group, dir, name string, pki localstack.TLSFiles, bcryptHash string) *localstack.Prometheus {
	t.Helper()
	port, err := localstack.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	web := fmt.Sprintf(`tls_server_config:
  cert_file: %q
  key_file: %q
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: %q
`, pki.ServerCert, pki.ServerKey, pki.CA)
	scrapeAuth := ""
	ready := promconfig.HTTPClientConfig{
		TLSConfig: promconfig.TLSConfig{CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
	}
	if bcryptHash != "" {
		web += fmt.Sprintf("basic_auth_users:\n  %s: %q\n", basicUser, bcryptHash)
		scrapeAuth = fmt.Sprintf("  basic_auth:\n    username: %s\n    password: %q\n", basicUser, basicPassword)
		ready.BasicAuth = &promconfig.BasicAuth{Username: basicUser, Password: promconfig.Secret(basicPassword)}
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: prometheus
  scheme: https
  tls_config:
    ca_file: %q
    cert_file: %q
    key_file: %q
%s  static_configs:
  - targets: [%q]
`, pki.CA, pki.ClientCert, pki.ClientKey, scrapeAuth, addr)
	readyClient, err := promconfig.NewClientFromConfig(ready, "ready")
	if err != nil {
		t.Fatal(err)
	}
	readyClient.Timeout = 2 * time.Second
	prom, err := localstack.StartPrometheusWith(ctx, g, dir, cfg, localstack.PrometheusOptions{
		Name: name, Addr: addr, WebConfig: web, TLS: true, ReadyClient: readyClient,
	})
	if err != nil {
		t.Fatal(err)
	}
	return prom
}

// waitForUp waits until Prometheus has scraped itself.
func waitForUp(ctx context.Context, t *testing.T, c *promclient.Client) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		vec, err := c.Query(ctx, upQuery)
		if err != nil {
			last = err
			return false, nil
		}
		last = fmt.Errorf("%s = %v", upQuery, vec)
		return len(vec) == 1 && vec[0].Value == 1, nil
	})
	if err != nil {
		t.Fatalf("Prometheus never scraped itself: %v (last: %v)", err, last)
	}
}

// checkServes runs a real query and a real series listing and checks that
// Prometheus' own target comes back: up 1, at instance.
func checkServes(ctx context.Context, t *testing.T, c *promclient.Client, instance string) {
	t.Helper()
	vec, err := c.Query(ctx, upQuery)
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	if len(vec) != 1 || vec[0].Value != 1 || vec[0].Metric["instance"] != model.LabelValue(instance) {
		t.Errorf("%s = %v, want one sample of 1 from %s", upQuery, vec, instance)
	}
	sets, err := c.Series(ctx, []string{upQuery, "prometheus_build_info"}, time.Now().Add(-time.Minute), time.Now())
	if err != nil {
		t.Fatalf("series: %v", err)
	}
	names := map[model.LabelValue]bool{}
	for _, ls := range sets {
		if ls["instance"] == model.LabelValue(instance) {
			names[ls[model.MetricNameLabel]] = true
		}
	}
	if !names["up"] || !names["prometheus_build_info"] {
		t.Errorf("series of %s: %v, want up and prometheus_build_info", instance, sets)
	}
}

// externalProvider is the external metrics provider for accessRules, its
// metrics discovered through lister, its queries sent through querier.
func externalProvider(ctx context.Context, t *testing.T, lister promclient.SeriesLister, querier promclient.Querier) *externalmetrics.Provider {
	t.Helper()
	cfg, err := config.Parse([]byte(accessRules), "access-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.CompileSet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ep := externalmetrics.New(externalmetrics.Config{Rules: set.External, Querier: querier})
	d := discovery.New(discovery.Config{Queries: discovery.QueriesOf(append(slices.Clone(set.Custom), set.External...)).File, Lister: lister, Interval: time.Minute})
	d.Subscribe(ep.Update)
	if r := d.Relist(ctx); len(r.Failed) > 0 {
		t.Fatalf("discovery: %v", r.Failed)
	}
	return ep
}

// checkProviderServes checks that the external metric is served: up is 1.
func checkProviderServes(ctx context.Context, t *testing.T, ep *externalmetrics.Provider) {
	t.Helper()
	list, err := ep.GetExternalMetric(ctx, "default", labels.Everything(), prometheusUp)
	if err != nil {
		t.Fatalf("external metric %s: %v", prometheusUp.Metric, err)
	}
	if len(list.Items) != 1 || list.Items[0].Value.Value() != 1 {
		t.Errorf("external metric %s = %+v, want one value of 1", prometheusUp.Metric, list.Items)
	}
}

// certRefusedTransient are how a refused client certificate may show
// instead of the server's alert. With TLS 1.3 the server checks the
// client's certificate after the client's handshake is done: a client
// still writing its request can see the server's reset before it reads the
// alert, and Go's HTTP/2 client reports a connection that failed before
// its first request without the cause (it could not be established, or
// it is closed).
var certRefusedTransient = []string{"connection reset by peer", "broken pipe", "http2: client conn could not be established", "http2: client conn is closed"}

// checkRefused checks that a client whose credentials Prometheus (or the
// proxy) refuses fails at once, not at its timeout, with an error naming
// want, for queries and for series listings; and that the metrics API
// answers 503 naming want. An error may name one of transient instead;
// want must still be named, by one of the calls or by a query retried.
func checkRefused(ctx context.Context, t *testing.T, c *promclient.Client, ep *externalmetrics.Provider, want string, transient ...string) {
	t.Helper()
	accepted := append([]string{want}, transient...)
	var named bool
	check := func(what string, call func() error, wantStatus func(error) bool) {
		t.Helper()
		start := time.Now()
		err := call()
		elapsed := time.Since(start)
		switch {
		case err == nil:
			t.Errorf("%s: succeeded, want an error naming %q", what, want)
		case !containsAny(err.Error(), accepted):
			t.Errorf("%s: %v, want an error naming %q", what, err, want)
		case !wantStatus(err):
			t.Errorf("%s: %v, want it served as 503 (Unavailable)", what, err)
		}
		if elapsed > refusedWithin {
			t.Errorf("%s: failed after %v, want within %v", what, elapsed, refusedWithin)
		}
		if err != nil && strings.Contains(err.Error(), want) {
			named = true
			t.Logf("%s refused (%s): %v", what, want, err)
		}
	}
	unavailable := func(err error) bool { return promclient.Classify(err) == promclient.Unavailable }
	check("query", func() error {
		_, err := c.Query(ctx, upQuery)
		return err
	}, unavailable)
	check("series listing", func() error {
		_, err := c.Series(ctx, []string{upQuery}, time.Now().Add(-time.Minute), time.Now())
		return err
	}, unavailable)
	check("metrics API", func() error {
		_, err := ep.GetExternalMetric(ctx, "default", labels.Everything(), prometheusUp)
		return err
	}, apierrors.IsServiceUnavailable)
	for i := 0; !named && i < 10; i++ {
		check("query again", func() error {
			_, err := c.Query(ctx, upQuery)
			return err
		}, unavailable)
	}
	if !named {
		t.Errorf("no error named %q", want)
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// writeKubeconfig writes a kubeconfig for --prometheus-auth-config with
// basic auth, the CA and the client certificate, and returns its path.
func writeKubeconfig(t *testing.T, dir, name, server string, pki localstack.TLSFiles, user, password string) string {
	t.Helper()
	path := filepath.Join(dir, name+".kubeconfig")
	if err := localstack.WriteKubeconfig(path, server, pki.CA, clientcmdapi.AuthInfo{
		Username: user, Password: password, ClientCertificate: pki.ClientCert, ClientKey: pki.ClientKey,
	}); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeFileAtomic replaces path's contents in one step, as a rotated
// projected token is replaced.
func writeFileAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// copyFile replaces dst's contents with src's in one step.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, dst, string(b))
}

// proxied is a request the proxy forwarded to Prometheus.
type proxied struct {
	Method, Path, Token, Tenant, Extra string
}

// bearerProxy serves Prometheus' API under proxyPrefix to requests with
// the bearer token that tokenFile holds at the time (401 otherwise) and
// the tenant header (403 otherwise), and records what it forwards.
type bearerProxy struct {
	URL       string
	tokenFile string
	tenant    string
	// hold makes the proxy keep requests, unanswered, until the client
	// gives up.
	hold      atomic.Bool
	release   chan struct{}
	mu        sync.Mutex
	forwarded []proxied
}

func startBearerProxy(t *testing.T, upstream string, upstreamTLS *tls.Config, tokenFile, tenant string) *bearerProxy {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{TLSClientConfig: upstreamTLS, ForceAttemptHTTP2: true}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path = strings.TrimPrefix(pr.In.URL.Path, proxyPrefix)
			pr.Out.URL.RawPath = ""
			// The token is the proxy's; Prometheus does not see it.
			pr.Out.Header.Del("Authorization")
		},
		Transport: transport,
	}
	p := &bearerProxy{tokenFile: tokenFile, tenant: tenant, release: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path, ok := strings.CutPrefix(r.URL.Path, proxyPrefix+"/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		want, err := os.ReadFile(p.tokenFile)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" || subtle.ConstantTimeCompare([]byte(token), bytes.TrimSpace(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="prometheus"`)
			http.Error(w, "no valid bearer token", http.StatusUnauthorized)
			return
		}
		if got := r.Header.Get(tenantHeader); got != p.tenant {
			http.Error(w, fmt.Sprintf("tenant %q may not read this Prometheus", got), http.StatusForbidden)
			return
		}
		if p.hold.Load() {
			select {
			case <-r.Context().Done():
			case <-p.release:
			case <-time.After(30 * time.Second):
			}
			return
		}
		p.mu.Lock()
		p.forwarded = append(p.forwarded, proxied{Method: r.Method, Path: "/" + path, Token: token,
			Tenant: r.Header.Get(tenantHeader), Extra: r.Header.Get("X-Extra")})
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(p.release)
		srv.Close()
		transport.CloseIdleConnections()
	})
	p.URL = srv.URL + proxyPrefix
	return p
}

// take returns the requests forwarded since the last take.
func (p *bearerProxy) take() []proxied {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.forwarded
	p.forwarded = nil
	return out
}

// expectTokens checks that every request forwarded since the last take
// carried token, and that there were some.
func (p *bearerProxy) expectTokens(t *testing.T, token string) {
	t.Helper()
	got := p.take()
	if len(got) == 0 {
		t.Errorf("the proxy forwarded nothing, want requests with %s", token)
	}
	for _, r := range got {
		if r.Token != token {
			t.Errorf("%s %s was forwarded with token %q, want %q", r.Method, r.Path, r.Token, token)
		}
	}
}

// get sends one query to the proxy with the given Authorization and
// tenant, and returns the status.
func (p *bearerProxy) get(t *testing.T, authorization, tenant string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.URL+"/api/v1/query?query="+url.QueryEscape(upQuery), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", authorization)
	req.Header.Set(tenantHeader, tenant)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
