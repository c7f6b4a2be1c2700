package adapter

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/term"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/externalmetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

func newCheckConfigCommand(ctx context.Context) *cobra.Command {
	o := NewOptions()
	logging := logsapi.NewLoggingConfiguration()
	base := &basecmd.AdapterBase{Name: Name}

	var fss cliflag.NamedFlagSets
	cmd := &cobra.Command{
		Use:   "check-config --config FILE [--prometheus-url URL] [adapter flags]",
		Short: "Validate a rules file; with a Prometheus URL, list what each rule discovers and which rules overlap",
		Long: `check-config validates a rules file offline: it reports every error the
adapter would refuse to start on, each with its file, line, rule and field.

With --prometheus-url (and the other Prometheus flags, as the adapter takes
them) it also lists every rule's series the way discovery does, and prints,
per rule, the metrics it serves and on which resources, the rules that
discover nothing, and the metrics two rules define (the first in the file
serves them). Series labels are mapped to resources with the built-in
Kubernetes resources, or with a cluster's own when --lister-kubeconfig is
given.

Exit status: 0 when the file is valid (and every seriesQuery could be
listed), 1 when it is not, 3 when a seriesQuery could not be listed.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyLogging(cmd, logging, fss.FlagSet("logging")); err != nil {
				return err
			}
			cfg, err := loadConfig(o.ConfigFile)
			if err != nil {
				return err
			}
			set, err := rules.CompileSet(cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", sourceName(o.ConfigFile), err)
			}
			out := cmd.OutOrStdout()
			printSummary(out, sourceName(o.ConfigFile), set)
			if !cmd.Flags().Changed("prometheus-url") {
				return nil
			}
			if errs := o.Validate(); len(errs) > 0 {
				return utilerrors.NewAggregate(errs)
			}
			mapper := rules.BuiltinMapper()
			if base.RemoteKubeConfigFile != "" {
				if mapper, err = base.RESTMapper(); err != nil {
					return fmt.Errorf("building the REST mapper from --lister-kubeconfig: %w", err)
				}
			}
			failed, err := o.checkDiscovery(ctx, out, set, mapper)
			if err != nil {
				return err
			}
			if failed {
				return &ExitError{Code: ExitAnswerError}
			}
			return nil
		},
	}
	fss = installFlags(cmd, o, base, logging)
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, moveFirst(fss, "metrics"), cols)
	return cmd
}

func sourceName(path string) string {
	if path == "" {
		return config.DefaultSource
	}
	return path
}

func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Default()
	}
	return config.Load(path)
}

func printSummary(w io.Writer, source string, set *rules.Set) {
	res := "none"
	if set.Resource != nil {
		res = fmt.Sprintf("cpu and memory, window %v", set.Resource.Window)
	}
	fmt.Fprintf(w, "%s: valid: %d rules, %d externalRules, resourceRules: %s\n", source, len(set.Custom), len(set.External), res)
}

// checkDiscovery lists the rules' series once, as discovery does, and
// prints what each rule serves. It reports whether a listing failed.
func (o *Options) checkDiscovery(ctx context.Context, w io.Writer, set *rules.Set, mapper apimeta.RESTMapper) (bool, error) {
	promCfg, err := o.PrometheusClientConfig()
	if err != nil {
		return false, err
	}
	prom, err := promclient.New(promCfg)
	if err != nil {
		return false, err
	}
	custom := custommetrics.New(custommetrics.Config{Rules: set.Custom, Mapper: mapper, Querier: prom})
	external := externalmetrics.New(externalmetrics.Config{Rules: set.External, Querier: prom})
	c := &components{custom: custom, external: external}
	disc := discovery.New(discovery.Config{
		Queries:  c.seriesQueries(set),
		Lister:   prom,
		Interval: o.MetricsRelistInterval,
		MaxAge:   o.MetricsMaxAge,
		Timeout:  o.DiscoveryTimeout,
	})
	disc.Subscribe(custom.Update)
	disc.Subscribe(external.Update)
	for _, warning := range o.Warnings() {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
	start := time.Now()
	r := disc.Relist(ctx)
	fmt.Fprintf(w, "\nDiscovery at %s: %d seriesQueries, %d failed, %v\n", redactURL(o.PrometheusURL), len(r.Series)+len(missing(r)), len(r.Failed), time.Since(start).Round(time.Millisecond))

	served, overlaps := custom.Served()
	byRule := map[string][]custommetrics.Served{}
	for _, s := range served {
		byRule[s.Rule] = append(byRule[s.Rule], s)
	}
	for _, rule := range set.Custom {
		fmt.Fprintf(w, "\n%s (seriesQuery %s)\n", rule, rule.SeriesQuery())
		if err := r.Failed[rule.SeriesQuery()]; err != nil {
			fmt.Fprintf(w, "  listing failed: %v\n", err)
			continue
		}
		ss := byRule[rule.String()]
		if len(ss) == 0 && slices.ContainsFunc(overlaps, func(ov custommetrics.Overlap) bool { return strings.HasPrefix(ov.Ignored, rule.String()+" ") }) {
			fmt.Fprintf(w, "  serves nothing: an earlier rule serves all its metrics (see Overlaps)\n")
			continue
		}
		if len(ss) == 0 {
			fmt.Fprintf(w, "  serves nothing: %d series match its seriesQuery, none gives a metric name with a resource label\n", len(r.Series[rule.SeriesQuery()]))
			continue
		}
		for _, line := range perMetric(ss) {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
	extServed, extOverlaps := external.Served()
	for _, rule := range set.External {
		fmt.Fprintf(w, "\n%s (seriesQuery %s)\n", rule, rule.SeriesQuery())
		if err := r.Failed[rule.SeriesQuery()]; err != nil {
			fmt.Fprintf(w, "  listing failed: %v\n", err)
			continue
		}
		var names []string
		for name, by := range extServed {
			if strings.HasPrefix(by, rule.String()+" ") {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		if len(names) == 0 && slices.ContainsFunc(extOverlaps, func(ov [2]string) bool { return strings.HasPrefix(ov[1], rule.String()+" ") }) {
			fmt.Fprintf(w, "  serves nothing: an earlier rule serves all its metrics (see Overlaps)\n")
			continue
		}
		if len(names) == 0 {
			fmt.Fprintf(w, "  serves nothing: %d series match its seriesQuery\n", len(r.Series[rule.SeriesQuery()]))
			continue
		}
		fmt.Fprintf(w, "  external metrics: %s\n", strings.Join(names, ", "))
	}
	if len(overlaps)+len(extOverlaps) > 0 {
		fmt.Fprintf(w, "\nOverlaps (the first rule in the file serves the metric):\n")
		for _, ov := range overlaps {
			fmt.Fprintf(w, "  %s on %s: %s serves it, %s is ignored\n", ov.Metric, ov.Resource, ov.Kept, ov.Ignored)
		}
		for _, ov := range extOverlaps {
			fmt.Fprintf(w, "  external metric: %s serves it, %s is ignored\n", ov[0], ov[1])
		}
	}
	return len(r.Failed) > 0, nil
}

// missing lists the failed queries that were never listed.
func missing(r discovery.Result) []string {
	var out []string
	for q := range r.Failed {
		if _, ok := r.Series[q]; !ok {
			out = append(out, q)
		}
	}
	return out
}

// perMetric writes one line per metric: its resources, marking those
// served through their pods and those of root-scoped objects.
func perMetric(ss []custommetrics.Served) []string {
	var lines []string
	var metric string
	var resources []string
	flush := func() {
		if metric != "" {
			lines = append(lines, fmt.Sprintf("%s: %s", metric, strings.Join(resources, ", ")))
		}
	}
	for _, s := range ss {
		if s.Metric != metric {
			flush()
			metric, resources = s.Metric, nil
		}
		r := s.Resource
		switch {
		case s.ViaPods:
			r += " (through its pods)"
		case !s.Namespaced:
			r += " (cluster-scoped)"
		}
		resources = append(resources, r)
	}
	flush()
	return lines
}
