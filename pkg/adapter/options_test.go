package adapter

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

func parse(t *testing.T, args ...string) *Options {
	t.Helper()
	o := NewOptions()
	fs := pflag.NewFlagSet("", pflag.ContinueOnError)
	o.AddFlags(fs, fs, fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parsing %q: %v", args, err)
	}
	return o
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{name: "accepts the defaults"},
		{name: "accepts GET in any case", args: []string{"--prometheus-verb=get"}},
		{name: "rejects a relative Prometheus URL", args: []string{"--prometheus-url=prometheus:9090"}, want: []string{`--prometheus-url "prometheus:9090" must be an absolute http or https URL`}},
		{name: "rejects an unknown verb", args: []string{"--prometheus-verb=PUT"}, want: []string{`--prometheus-verb must be GET or POST, got "PUT"`}},
		{name: "rejects a zero timeout", args: []string{"--prometheus-timeout=0s"}, want: []string{"--prometheus-timeout must be positive"}},
		{name: "rejects a client cert without key", args: []string{"--prometheus-client-tls-cert-file=c.pem"}, want: []string{"must be set together"}},
		{name: "rejects both kubeconfig auth modes", args: []string{"--prometheus-auth-config=kc", "--prometheus-auth-incluster"}, want: []string{"exclude each other"}},
		{name: "rejects kubeconfig auth mixed with a token file", args: []string{"--prometheus-auth-config=kc", "--prometheus-token-file=t"}, want: []string{"do not combine them"}},
		{name: "rejects a header without value separator", args: []string{"--prometheus-header=X-Org"}, want: []string{`--prometheus-header "X-Org" must be Name=value`}},
		{name: "rejects a header with a bad name", args: []string{"--prometheus-header=X Org=a"}, want: []string{"not a valid HTTP header"}},
		{name: "rejects a header the client sets itself", args: []string{"--prometheus-header=authorization=Bearer x"}, want: []string{`--prometheus-header: setting header "Authorization" is not allowed`}},
		{name: "rejects a max age shorter than the relist interval", args: []string{"--metrics-relist-interval=5m", "--metrics-max-age=1m"}, want: []string{"--metrics-max-age (1m0s) must not be shorter than --metrics-relist-interval (5m0s)"}},
		{name: "rejects a zero relist interval", args: []string{"--metrics-relist-interval=0s"}, want: []string{"--metrics-relist-interval must be positive"}},
		{name: "rejects zero concurrent object queries", args: []string{"--max-concurrent-object-queries=0"}, want: []string{"--max-concurrent-object-queries must be at least 1"}},
		{
			name: "reports every problem at once",
			args: []string{"--prometheus-verb=PUT", "--prometheus-timeout=-1s"},
			want: []string{"--prometheus-verb", "--prometheus-timeout"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := parse(t, tc.args...).Validate()
			if len(errs) != len(tc.want) {
				t.Fatalf("Validate() = %v, want %d errors", errs, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(errs[i].Error(), w) {
					t.Errorf("error %d = %q, want %q", i, errs[i], w)
				}
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{name: "none for the defaults"},
		{name: "none for TLS flags with https", args: []string{"--prometheus-url=https://p:9090", "--prometheus-ca-file=ca.pem", "--prometheus-token-file=t"}},
		{
			name: "TLS flags with http have no effect",
			args: []string{"--prometheus-url=http://p:9090", "--prometheus-insecure-skip-tls-verify", "--prometheus-ca-file=ca.pem"},
			want: []string{"--prometheus-ca-file, --prometheus-insecure-skip-tls-verify apply to https only"},
		},
		{
			name: "credentials over http, the password never printed",
			args: []string{"--prometheus-url=http://admin:s3cret@p:9090"},
			want: []string{"credentials for Prometheus (--prometheus-token-file, or a user in the URL) go over plain http to p:9090"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parse(t, tc.args...).Warnings()
			if len(got) != len(tc.want) {
				t.Fatalf("Warnings() = %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) || strings.Contains(got[i], "s3cret") {
					t.Errorf("warning %d = %q, want %q and no password", i, got[i], w)
				}
			}
		})
	}
	if got := redactURL("http://admin:s3cret@p:9090/prom"); got != "http://admin:xxxxx@p:9090/prom" {
		t.Errorf("redactURL = %q", got)
	}
}

// queryWith validates o, builds the Prometheus client from it as the
// adapter does, and runs one query.
func queryWith(t *testing.T, o *Options) {
	t.Helper()
	if errs := o.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	cfg, err := o.PrometheusClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := promclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Query(context.Background(), "up"); err != nil {
		t.Fatal(err)
	}
}

// TestPrometheusClientConfigHonoursProxyEnvironment: HTTP_PROXY applies
// to the flags' transport as it does to --prometheus-auth-config's.
func TestPrometheusClientConfigHonoursProxyEnvironment(t *testing.T) {
	var proxied string
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied = r.URL.String()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[]}}`))
	}))
	defer proxy.Close()
	t.Setenv("HTTP_PROXY", proxy.URL)
	t.Setenv("NO_PROXY", "")
	queryWith(t, parse(t, "--prometheus-url=http://prometheus.example:9090"))
	if !strings.HasPrefix(proxied, "http://prometheus.example:9090/api/v1/query") {
		t.Errorf("the proxy saw %q, want the query to prometheus.example", proxied)
	}
}

func TestPrometheusClientConfigSendsHeadersAndToken(t *testing.T) {
	var gotAuth, gotOrg, gotMethod string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotOrg, gotMethod = r.Header.Get("Authorization"), r.Header.Get("X-Scope-OrgID"), r.Method
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[]}}`))
	}))
	defer srv.Close()
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	queryWith(t, parse(t, "--prometheus-url="+srv.URL, "--prometheus-token-file="+token, "--prometheus-header=X-Scope-OrgID=team-a", "--prometheus-verb=GET"))
	if gotAuth != "Bearer s3cret" || gotOrg != "team-a" || gotMethod != http.MethodGet {
		t.Errorf("Authorization=%q X-Scope-OrgID=%q method=%s", gotAuth, gotOrg, gotMethod)
	}
}

func TestPrometheusClientConfigReportsMissingCA(t *testing.T) {
	o := parse(t, "--prometheus-url=https://p:9090", "--prometheus-ca-file=/does/not/exist.pem")
	_, err := o.PrometheusClientConfig()
	if err == nil || !strings.Contains(err.Error(), "exist.pem") {
		t.Errorf("error = %v, want one naming the CA file", err)
	}
}

func TestHelpDocumentsEveryFlag(t *testing.T) {
	cmd := NewCommand(context.Background())
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	n := 0
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		n++
		if f.Hidden {
			return
		}
		if !strings.Contains(help, "--"+f.Name) {
			t.Errorf("--help does not list --%s", f.Name)
		}
		if strings.TrimSpace(f.Usage) == "" {
			t.Errorf("--%s has no description", f.Name)
		}
	})
	if n < 40 {
		t.Errorf("only %d flags registered; the API server's flags are missing", n)
	}
	for _, sub := range cmd.Commands() {
		if sub.Name() != "completion" && sub.Name() != "help" && !strings.Contains(help, "  "+sub.Name()+" ") {
			t.Errorf("--help does not name the %s command", sub.Name())
		}
	}
	for _, section := range []string{"Prometheus flags:", "Metrics flags:", "Kubernetes api flags:", "Logging flags:"} {
		if !strings.Contains(help, section) {
			t.Errorf("--help lacks the section %q", section)
		}
	}
}

func TestCommandPrintsDefaultConfigAndVersion(t *testing.T) {
	for _, tc := range []struct{ arg, want string }{
		{"--print-default-config", "requests-per-second"},
		{"--version", Name},
	} {
		cmd := NewCommand(context.Background())
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs([]string{tc.arg})
		if err := cmd.Execute(); err != nil {
			t.Fatalf("%s: %v", tc.arg, err)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("%s printed %q, want %q", tc.arg, out.String(), tc.want)
		}
	}
}

func TestCommandRejectsBadFlagsBeforeStarting(t *testing.T) {
	cmd := NewCommand(context.Background())
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"--prometheus-verb=PUT", "--metrics-relist-interval=0s"})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "--prometheus-verb") || !strings.Contains(err.Error(), "--metrics-relist-interval") {
		t.Errorf("error = %v, want both problems", err)
	}
}

func TestCommandRejectsBadConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte("rules:\n- seriesQuery: x\n  metricQuery: y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := NewCommand(context.Background())
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"--config=" + path})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), path+":3") || !strings.Contains(err.Error(), "metricQuery") {
		t.Errorf("error = %v, want it to name the file, line and field", err)
	}
}

// TestAcceptsPrometheusAdapterFlags parses the flags prometheus-adapter's
// users pass (its own, the API server's, the Helm chart's) into the real
// command: none is unknown, and each lands where it should.
func TestAcceptsPrometheusAdapterFlags(t *testing.T) {
	for _, args := range [][]string{
		{
			"--prometheus-url=https://prometheus.monitoring.svc:9090/", "--config=/etc/adapter/config.yaml",
			"--metrics-relist-interval=1m", "--metrics-max-age=2m",
			"--prometheus-ca-file=/ca.pem", "--prometheus-client-tls-cert-file=/c.pem", "--prometheus-client-tls-key-file=/k.pem",
			"--prometheus-token-file=/token", "--prometheus-header=X-Scope-OrgID=team-a", "--prometheus-verb=GET",
			"--disable-http2", "--secure-port=6443", "--cert-dir=/var/run/serving-cert",
			"--tls-cert-file=/tls.crt", "--tls-private-key-file=/tls.key",
			"--tls-cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "--lister-kubeconfig=/kc",
			"--authentication-kubeconfig=/kc", "--authorization-kubeconfig=/kc", "--v=4", "--logtostderr=true",
			"--audit-log-path=-", "--requestheader-client-ca-file=/rh.pem",
		},
		{"--prometheus-auth-config=/kubeconfig"},
		{"--prometheus-auth-incluster"},
	} {
		cmd := NewCommand(context.Background())
		if err := cmd.ParseFlags(args); err != nil {
			t.Errorf("parsing %q: %v", args, err)
			continue
		}
		for _, a := range args {
			name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			f := cmd.Flags().Lookup(name)
			if f == nil {
				t.Errorf("--%s is not a flag", name)
				continue
			}
			if value != "" && f.Value.String() != value && !strings.Contains(f.Value.String(), value) {
				t.Errorf("--%s = %q after parsing %q", name, f.Value.String(), a)
			}
		}
	}
}

// The API server's "yes" to a request is kept as long as kube-apiserver
// keeps its webhook's (an HPA asks the same question every 15 s); a "no"
// only as long as the library's default.
func TestAuthorizationCacheDefaults(t *testing.T) {
	cmd := NewCommand(context.Background())
	for flag, want := range map[string]string{
		"authorization-webhook-cache-authorized-ttl":   AuthorizedCacheTTL.String(),
		"authorization-webhook-cache-unauthorized-ttl": "10s",
	} {
		f := cmd.Flags().Lookup(flag)
		if f == nil || f.DefValue != want {
			t.Errorf("--%s: %+v, want the default %s", flag, f, want)
		}
	}
	if AuthorizedCacheTTL < 2*15*time.Second {
		t.Errorf("AuthorizedCacheTTL %s: an HPA syncing every 15 s would miss the cache", AuthorizedCacheTTL)
	}
}

// The REST mapper is refreshed every minute by default: the library's
// zero would run API discovery back to back, and is refused.
func TestDiscoveryIntervalDefaultsToAMinute(t *testing.T) {
	cmd := NewCommand(context.Background())
	f := cmd.Flags().Lookup("discovery-interval")
	if f == nil || f.DefValue != DefaultDiscoveryInterval.String() {
		t.Fatalf("--discovery-interval: %+v, want the default %s", f, DefaultDiscoveryInterval)
	}
	if DefaultDiscoveryInterval <= 0 {
		t.Fatalf("DefaultDiscoveryInterval %s: the REST mapper would be refreshed back to back", DefaultDiscoveryInterval)
	}
	for _, v := range []time.Duration{0, -time.Second} {
		base := &basecmd.AdapterBase{DiscoveryInterval: v}
		_, err := NewOptions().clients(base, &rules.Set{})
		if err == nil || !strings.Contains(err.Error(), "--discovery-interval must be positive") {
			t.Errorf("--discovery-interval=%s: got %v, want it refused", v, err)
		}
	}
}
