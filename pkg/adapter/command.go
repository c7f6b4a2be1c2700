package adapter

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/healthz"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/term"
	"k8s.io/klog/v2"
	openapicommon "k8s.io/kube-openapi/pkg/common"
	cmapiserver "sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	cmoptions "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd/options"
	generatedcore "sigs.k8s.io/custom-metrics-apiserver/pkg/generated/openapi/core"
	generatedcustommetrics "sigs.k8s.io/custom-metrics-apiserver/pkg/generated/openapi/custommetrics"
	generatedexternalmetrics "sigs.k8s.io/custom-metrics-apiserver/pkg/generated/openapi/externalmetrics"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/frontproxy"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resourcemetrics"
	resourceopenapi "github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resourcemetrics/openapi"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/version"
)

// Name is the adapter's name in logs and in its OpenAPI document.
const Name = "custom-metrics-adapter"

// longHelp is the root command's description.
const longHelp = `custom-metrics-adapter serves, from Prometheus, the three metrics APIs the
HorizontalPodAutoscaler reads:

  custom.metrics.k8s.io v1beta1, v1beta2   Pods and Object metrics (rules)
  external.metrics.k8s.io v1beta1          External metrics (externalRules)
  metrics.k8s.io v1beta1                   CPU and memory of pods and nodes,
                                           for kubectl top and Resource
                                           metrics (resourceRules)

It reads prometheus-adapter's rules format (--config), discovers the metrics
those rules describe, and answers each request with one PromQL query for the
objects it names, resolved from informer caches. Each API can be turned off
(--enable-*-metrics=false), for clusters where metrics-server or KEDA serves it.

Environment: GOGC is 75 unless set (a 10,000-pod answer is megabytes of
garbage per request); set GOMEMLIMIT under the container's memory limit.

Run it behind an APIService. Outside a cluster, point --lister-kubeconfig,
--authentication-kubeconfig and --authorization-kubeconfig at a kubeconfig.`

// NewCommand returns the adapter's root command. It runs until ctx is done.
func NewCommand(ctx context.Context) *cobra.Command {
	o := NewOptions()
	logging := logsapi.NewLoggingConfiguration()
	base := &basecmd.AdapterBase{Name: Name}

	cmd := &cobra.Command{
		Use:           "adapter",
		Short:         "Serves the Kubernetes metrics APIs (custom, external and resource metrics) from Prometheus",
		Long:          longHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.PrintVersion {
				fmt.Fprintln(cmd.OutOrStdout(), Name, version.Get())
				return nil
			}
			if o.PrintDefaultConfig {
				_, err := cmd.OutOrStdout().Write(config.DefaultYAML())
				return err
			}
			// SIGHUP reloads the rules. Caught from here on, so that it
			// never ends the process (Go's default), whether or not a
			// rules file is watched.
			o.hup = make(chan os.Signal, 1)
			signal.Notify(o.hup, syscall.SIGHUP)
			if errs := o.Validate(); len(errs) > 0 {
				return utilerrors.NewAggregate(errs)
			}
			// Before anything is logged, so that -v and the log format
			// apply to the rules' lines too.
			if err := logsapi.ValidateAndApply(logging, nil); err != nil {
				return fmt.Errorf("logging flags: %w", err)
			}
			data, err := o.readRules()
			if err != nil {
				return err
			}
			set, err := o.compileRules(data)
			if err != nil {
				return err
			}
			o.rulesData = data
			defaultGC()
			return o.Run(ctx, base, set)
		},
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%q takes no arguments, got %q", cmd.CommandPath(), args)
			}
			return nil
		},
	}

	fss := installFlags(cmd, o, base, logging)
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, fss, cols)
	cmd.AddCommand(newExplainCommand(ctx), newCheckConfigCommand(ctx))
	// The help function above prints flags only: name the subcommands
	// in the description.
	var b strings.Builder
	b.WriteString("\n\nCommands (adapter COMMAND --help for each):\n")
	for _, sub := range cmd.Commands() {
		fmt.Fprintf(&b, "  %-13s %s\n", sub.Name(), sub.Short)
	}
	cmd.Long += strings.TrimRight(b.String(), "\n")
	return cmd
}

// installFlags adds the adapter's flags to cmd, in named sections for
// --help. The subcommands take the same flags, so the adapter's own
// arguments can be passed to them as they are.
func installFlags(cmd *cobra.Command, o *Options, base *basecmd.AdapterBase, logging *logsapi.LoggingConfiguration) cliflag.NamedFlagSets {
	var fss cliflag.NamedFlagSets
	o.AddFlags(fss.FlagSet("prometheus"), fss.FlagSet("metrics"), fss.FlagSet("general"))
	fss.FlagSet("general").BoolP("help", "h", false, "Show this help and exit.")
	base.FlagSet = fss.FlagSet("kubernetes api")
	base.CustomMetricsAdapterServerOptions = cmoptions.NewCustomMetricsAdapterServerOptions()
	base.Authorization.AllowCacheTTL = AuthorizedCacheTTL
	base.DiscoveryInterval = DefaultDiscoveryInterval
	base.InstallFlags()
	logsapi.AddFlags(logging, fss.FlagSet("logging"))
	// prometheus-adapter's manifests pass klog's --logtostderr, which
	// Kubernetes components no longer have: accept it, do nothing.
	fss.FlagSet("logging").Bool("logtostderr", true, "Accepted for prometheus-adapter compatibility; has no effect (logs go to stderr).")
	_ = fss.FlagSet("logging").MarkDeprecated("logtostderr", "it has no effect: logs go to stderr")
	for _, fs := range fss.FlagSets {
		cmd.Flags().AddFlagSet(fs)
	}
	return fss
}

// AuthorizedCacheTTL is how long the adapter keeps the API server's "yes"
// to a request's SubjectAccessReview (--authorization-webhook-cache-authorized-ttl),
// as kube-apiserver keeps its authorization webhook's. Every HPA asks the
// same question every 15 s: with the library's 10 s, each request would
// cost a SubjectAccessReview (a fifth of the adapter's CPU under 2,000
// HPAs, docs/performance.md). A "no" is kept 10 s, as before, and a
// revoked grant stops working within this TTL.
const AuthorizedCacheTTL = 5 * time.Minute

// DefaultDiscoveryInterval is how often the REST mapper asks the API
// server which resource types exist (--discovery-interval), so that an
// Object metric of a CRD installed after the adapter resolves within it.
// custom-metrics-apiserver leaves the flag at zero, under which the
// refresh runs back to back: a discovery of the whole API (/api and
// /apis) more than once a second, for as long as the adapter runs.
const DefaultDiscoveryInterval = time.Minute

// Run builds the providers of the enabled APIs for the compiled rules and
// serves until ctx is done.
func (o *Options) Run(ctx context.Context, base *basecmd.AdapterBase, set *rules.Set) error {
	c, err := o.build(base, set)
	if err != nil {
		return err
	}
	server, err := o.server(base, c)
	if err != nil {
		return err
	}
	metrics.Register(c.resolver)
	metrics.SetLoaded(time.Now())

	// What requests rely on (the caches, discovery, the rules, the REST
	// mapper) runs until the server has stopped serving, not only until
	// the signal: after SIGTERM the server keeps answering for
	// --shutdown-delay-duration and while requests in flight finish.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	c.resolver.Start(bg)
	go c.disc.Run(bg)
	if c.sharing != nil {
		go c.sharing.Run(bg, 4)
	}
	if !c.ups.Empty() {
		go c.ups.Run(bg)
	}
	// New resource types (a CRD installed later, an aggregated API that
	// was down at start), every --discovery-interval.
	c.refresher.RunUntil(bg.Done())
	if c.metricRules != nil {
		c.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.kube.CoreV1().Events("")})
		defer c.events.Shutdown()
		go c.metricRules.Run(bg)
	}
	if o.ConfigFile != "" && o.WatchConfig {
		go newReloader(o.ConfigFile, o.rulesData, o.compileRules, c.setFile, o.hup).run(bg)
	} else if o.hup != nil {
		go ignoreHUP(bg, o.hup)
	}
	for _, w := range o.Warnings() {
		klog.InfoS("Configuration warning", "warning", w)
	}
	klog.InfoS("Starting", "version", version.Get(), "apis", c.apis, "prometheus", redactURL(o.PrometheusURL), "verb", o.PrometheusVerb, "timeout", o.PrometheusTimeout)
	if err := server.PrepareRun().RunWithContext(ctx); err != nil {
		return fmt.Errorf("serving: %w", err)
	}
	klog.InfoS("Stopped")
	return nil
}

// server builds the API server of the served APIs, with the front-proxy
// verification cache, the selector check, the explain endpoint and the
// readiness checks.
func (o *Options) server(base *basecmd.AdapterBase, c *components) (*genericapiserver.GenericAPIServer, error) {
	if c.custom != nil {
		base.WithCustomMetrics(c.custom)
	}
	if c.external != nil {
		base.WithExternalMetrics(c.external)
	}
	if o.DisableHTTP2 {
		base.SecureServing.DisableHTTP2Serving = true
	}
	base.OpenAPIConfig, base.OpenAPIV3Config = openAPIConfigs(c.custom != nil, c.external != nil, c.resource != nil)
	serverConfig, err := base.Config()
	if err != nil {
		return nil, fmt.Errorf("configuring the API server: %w", err)
	}
	serverConfig.GenericConfig.ShutdownDelayDuration = o.ShutdownDelay
	if !c.ups.Empty() {
		// A forwarding certificate the API server would accept is a
		// credential that works elsewhere: refused at start.
		if err := c.ups.CheckNotTrusted(apiServerCAs(serverConfig.GenericConfig)); err != nil {
			return nil, fmt.Errorf("--upstreams: %w", err)
		}
	}
	// Every request through the aggregator presents the same front-proxy
	// certificate: verify it once per certificate and CA bundle.
	authn := &serverConfig.GenericConfig.Authentication
	authn.Authenticator = frontproxy.WithVerifyCache(authn.Authenticator, authn.RequestHeaderConfig)
	rt := &router{c: c, ups: c.ups}
	serverConfig.GenericConfig.BuildHandlerChainFunc = func(h http.Handler, c *genericapiserver.Config) http.Handler {
		return genericapiserver.DefaultBuildHandlerChain(rejectMalformedSelectors(rt.handler(h)), c)
	}
	server, err := base.Server()
	if err != nil {
		return nil, fmt.Errorf("creating the API server: %w", err)
	}
	s := server.GenericAPIServer
	if c.resource != nil {
		if err := resourcemetrics.Install(s, c.resource); err != nil {
			return nil, fmt.Errorf("installing metrics.k8s.io: %w", err)
		}
	}
	if o.EnableExplainEndpoint {
		// Behind the API server's authentication and authorization, like
		// /debug/pprof: callers need get on the non-resource URL, and the
		// request explained is authorized as itself.
		s.Handler.NonGoRestfulMux.HandlePrefix(explain.PathPrefix, explain.Handler(c.explainProviders(), serverConfig.GenericConfig.Authorization.Authorizer))
	}
	// Ready when the adapter can answer: pods are cached, and the rules'
	// series were listed. /readyz?verbose names what is missing.
	checks := []healthz.HealthChecker{
		healthz.NamedCheck("pod-cache", func(*http.Request) error { return c.resolver.PodCacheError() }),
		healthz.NamedCheck("metric-discovery", func(*http.Request) error { return c.disc.Ready() }),
	}
	if c.metricRules != nil {
		// Until MetricRules are listed, their metrics would be 404s. A
		// cluster without the CRD (manifests/metric-rules) never lists
		// them: the log says so.
		checks = append(checks, healthz.NamedCheck("metric-rules", func(*http.Request) error { return c.metricRules.Ready() }))
	}
	if err := s.AddReadyzChecks(checks...); err != nil {
		return nil, fmt.Errorf("adding readiness checks: %w", err)
	}
	return s, nil
}

// apiServerCAs are the CA bundles the API server takes client
// certificates of, as the adapter's own authentication reads them (from
// the cluster's extension-apiserver-authentication ConfigMap, or flags):
// its client CA and its front-proxy (requestheader) CA.
func apiServerCAs(cfg *genericapiserver.Config) map[string][]byte {
	out := map[string][]byte{}
	if cfg.SecureServing != nil && cfg.SecureServing.ClientCA != nil {
		out["client CA"] = cfg.SecureServing.ClientCA.CurrentCABundleContent()
	}
	if rh := cfg.Authentication.RequestHeaderConfig; rh != nil && rh.CAContentProvider != nil {
		out["front-proxy (requestheader) CA"] = rh.CAContentProvider.CurrentCABundleContent()
	}
	return out
}

// redactURL is u with any password replaced by "xxxxx", for logs.
func redactURL(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return parsed.Redacted()
}

// DefaultGCPercent is the garbage collector's target when GOGC is not set:
// a large answer (10,000 pods) is a few MB of garbage per request, and at
// the Go default of 100 the heap grows to twice what is live. 75 keeps the
// resident memory after sustained load at 10,000 pods under 150 MiB for a
// few percent of CPU (docs/performance.md).
const DefaultGCPercent = 75

// defaultGC applies DefaultGCPercent unless the environment sets GOGC.
func defaultGC() {
	if _, set := os.LookupEnv("GOGC"); set {
		return
	}
	debug.SetGCPercent(DefaultGCPercent)
	klog.V(2).InfoS("Garbage collector target", "GOGC", DefaultGCPercent)
}

// openAPIConfigs returns the OpenAPI v2 and v3 configurations for the
// enabled APIs: custom-metrics-apiserver's definitions, plus those of
// metrics.k8s.io when the resource metrics API is served.
func openAPIConfigs(custom, external, resource bool) (*openapicommon.Config, *openapicommon.OpenAPIV3Config) {
	getters := []openapicommon.GetOpenAPIDefinitions{generatedcore.GetOpenAPIDefinitions}
	if custom {
		getters = append(getters, generatedcustommetrics.GetOpenAPIDefinitions)
	}
	if external {
		getters = append(getters, generatedexternalmetrics.GetOpenAPIDefinitions)
	}
	if resource {
		getters = append(getters, resourceopenapi.GetOpenAPIDefinitions)
	}
	defs := func(ref openapicommon.ReferenceCallback) map[string]openapicommon.OpenAPIDefinition {
		out := map[string]openapicommon.OpenAPIDefinition{}
		for _, get := range getters {
			maps.Copy(out, get(ref))
		}
		return out
	}
	namer := openapinamer.NewDefinitionNamer(cmapiserver.Scheme, resourcemetrics.Scheme)
	v2 := genericapiserver.DefaultOpenAPIConfig(defs, namer)
	v2.Info.Title, v2.Info.Version = Name, version.Get()
	v3 := genericapiserver.DefaultOpenAPIV3Config(defs, namer)
	v3.Info.Title, v3.Info.Version = Name, version.Get()
	return v2, v3
}

// loadRules reads --config (or the built-in rules) and compiles them.
func (o *Options) loadRules() (*rules.Set, error) {
	data, err := o.readRules()
	if err != nil {
		return nil, err
	}
	return o.compileRules(data)
}

// readRules reads --config; nil for the built-in rules.
func (o *Options) readRules() ([]byte, error) {
	if o.ConfigFile == "" {
		return nil, nil
	}
	data, err := os.ReadFile(o.ConfigFile)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return data, nil
}

// compileRules parses and compiles what readRules read (nil: the built-in
// rules). Rules left out are logged, with why, and reported in the
// adapter's metrics; every other rule serves.
func (o *Options) compileRules(data []byte) (*rules.Set, error) {
	source := o.ConfigFile
	if source == "" {
		source, data = config.DefaultSource, config.DefaultYAML()
	}
	set, err := rules.Parse(data, source)
	if err != nil {
		return nil, err
	}
	// The file's stores are part of it: a store that cannot be built
	// refuses the file (at start, or a reload keeps the rules served).
	if _, err := o.stores(set); err != nil {
		return nil, err
	}
	if !o.EnableExternalMetrics && len(set.External) > 0 {
		klog.InfoS("Config warning", "warning", fmt.Sprintf("%s: externalRules are not served: --enable-external-metrics=false", source))
	}
	if !o.EnableResourceMetrics && set.Resource != nil {
		klog.InfoS("Config warning", "warning", fmt.Sprintf("%s: resourceRules are not served: --enable-resource-metrics=false", source))
	}
	var leftOut []string
	for _, r := range set.LeftOut() {
		klog.ErrorS(r.LeftOut(), "Rule left out: it cannot be served correctly, so it serves nothing; every other rule serves", "rule", r.String())
		leftOut = append(leftOut, r.String())
	}
	metrics.SetLeftOut(leftOut)
	klog.InfoS("Loaded rules", "source", source, "rules", len(set.Custom), "externalRules", len(set.External), "resourceRules", set.Resource != nil, "leftOut", len(leftOut))
	return set, nil
}
