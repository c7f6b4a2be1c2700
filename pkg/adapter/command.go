package adapter

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apiserver/pkg/server/healthz"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/term"
	"k8s.io/klog/v2"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/version"
)

// Name is the adapter's name in logs and in its OpenAPI document.
const Name = "custom-metrics-adapter"

// NewCommand returns the adapter's root command. It runs until ctx is done.
func NewCommand(ctx context.Context) *cobra.Command {
	o := NewOptions()
	logging := logsapi.NewLoggingConfiguration()
	base := &basecmd.AdapterBase{Name: Name}

	cmd := &cobra.Command{
		Use:   "adapter",
		Short: "Serves the Kubernetes custom metrics API (custom.metrics.k8s.io) from Prometheus",
		Long: `custom-metrics-adapter serves custom.metrics.k8s.io v1beta1 and v1beta2 from
Prometheus, so HorizontalPodAutoscalers can scale on Pods and Object metrics.

It reads prometheus-adapter's rules format (--config), discovers the metrics
those rules describe, and answers each request with one PromQL query for the
objects it names, resolved from informer caches.

Run it behind an APIService. Outside a cluster, point --lister-kubeconfig,
--authentication-kubeconfig and --authorization-kubeconfig at a kubeconfig.`,
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
			if errs := o.Validate(); len(errs) > 0 {
				return utilerrors.NewAggregate(errs)
			}
			compiled, err := o.loadRules()
			if err != nil {
				return err
			}
			if err := logsapi.ValidateAndApply(logging, nil); err != nil {
				return fmt.Errorf("logging flags: %w", err)
			}
			return o.Run(ctx, base, compiled)
		},
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%q takes no arguments, got %q", cmd.CommandPath(), args)
			}
			return nil
		},
	}

	var fss cliflag.NamedFlagSets
	o.AddFlags(fss.FlagSet("prometheus"), fss.FlagSet("metrics"), fss.FlagSet("general"))
	fss.FlagSet("general").BoolP("help", "h", false, "Show this help and exit.")
	base.FlagSet = fss.FlagSet("kubernetes api")
	base.InstallFlags()
	logsapi.AddFlags(logging, fss.FlagSet("logging"))
	for _, fs := range fss.FlagSets {
		cmd.Flags().AddFlagSet(fs)
	}
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, fss, cols)
	return cmd
}

// Run builds the provider for the compiled rules and serves until ctx is
// done.
func (o *Options) Run(ctx context.Context, base *basecmd.AdapterBase, compiled []*rules.Rule) error {
	promCfg, err := o.PrometheusClientConfig()
	if err != nil {
		return err
	}
	prom, err := promclient.New(promCfg)
	if err != nil {
		return err
	}

	restCfg, err := base.ClientConfig()
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("creating Kubernetes client: %w", err)
	}
	meta, err := metadata.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("creating Kubernetes metadata client: %w", err)
	}
	mapper, err := base.RESTMapper()
	if err != nil {
		return fmt.Errorf("building the REST mapper: %w", err)
	}

	res := resolver.New(kube, meta, mapper)
	p := custommetrics.New(custommetrics.Config{
		Rules:                      compiled,
		Mapper:                     mapper,
		Querier:                    prom,
		Series:                     prom,
		Resolver:                   res,
		RelistInterval:             o.MetricsRelistInterval,
		MaxAge:                     o.MetricsMaxAge,
		MaxConcurrentObjectQueries: o.MaxConcurrentObjectQueries,
	})
	base.WithCustomMetrics(p)

	server, err := base.Server()
	if err != nil {
		return fmt.Errorf("creating the API server: %w", err)
	}
	if err := server.GenericAPIServer.AddReadyzChecks(healthz.NamedCheck("pod-cache", func(*http.Request) error {
		if !res.HasSynced() {
			return errors.New("the pod cache is not filled yet")
		}
		return nil
	})); err != nil {
		return fmt.Errorf("adding readiness check: %w", err)
	}

	res.Start(ctx)
	go p.RunDiscovery(ctx)
	klog.InfoS("Starting", "version", version.Get(), "prometheus", o.PrometheusURL, "verb", o.PrometheusVerb, "timeout", o.PrometheusTimeout)
	if err := server.GenericAPIServer.PrepareRun().RunWithContext(ctx); err != nil {
		return fmt.Errorf("serving: %w", err)
	}
	klog.InfoS("Stopped")
	return nil
}

// loadRules reads --config (or the built-in rules) and compiles them.
func (o *Options) loadRules() ([]*rules.Rule, error) {
	var cfg *config.Config
	var warnings []string
	var err error
	source := o.ConfigFile
	if source == "" {
		source = config.DefaultSource
		cfg, warnings, err = config.Default()
	} else {
		cfg, warnings, err = config.Load(source)
	}
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		klog.InfoS("Config warning", "warning", w)
	}
	compiled, err := rules.Compile(cfg.Rules)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	klog.InfoS("Loaded rules", "source", source, "rules", len(compiled))
	return compiled, nil
}
