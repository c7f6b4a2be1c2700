package adapter

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/term"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/backends"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/catalog"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/externalmetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metricrules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

func newCheckConfigCommand(ctx context.Context) *cobra.Command {
	o := NewOptions()
	logging := logsapi.NewLoggingConfiguration()
	base := &basecmd.AdapterBase{Name: Name}

	var fss cliflag.NamedFlagSets
	var ruleFiles []string
	cmd := &cobra.Command{
		Use:   "check-config --config FILE [--metric-rule-file FILE]... [--prometheus-url URL] [adapter flags]",
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

--metric-rule-file checks MetricRule objects (YAML, as kubectl apply takes
them) the way the adapter serves them with --metric-rules: each compiled
confined to its namespace (--metric-rules-namespace-label), at most
--metric-rules-per-namespace per namespace (oldest first; by name when the
files carry no creation time); with --prometheus-url, their series are
listed with the file's rules.

Exit status: 0 when the file is valid (and every seriesQuery could be
listed), 1 when it is not (or a MetricRule is refused), 3 when a seriesQuery
could not be listed, 4 when the adapter would start but leave rules out
(each is printed with why; MetricRules over the per-namespace limit too).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyLogging(cmd, logging, fss.FlagSet("logging")); err != nil {
				return err
			}
			set, err := loadRules(o.ConfigFile)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			printSummary(out, sourceName(o.ConfigFile), set)
			leftOut := len(set.LeftOut()) > 0
			refused, overLimit, err := o.checkMetricRules(out, ruleFiles, set)
			if err != nil {
				return err
			}
			leftOut = leftOut || overLimit
			if !cmd.Flags().Changed("prometheus-url") {
				switch {
				case refused:
					return &ExitError{Code: ExitFailed}
				case leftOut:
					return &ExitError{Code: ExitRulesLeftOut}
				}
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
			switch {
			case refused:
				return &ExitError{Code: ExitFailed}
			case failed:
				return &ExitError{Code: ExitAnswerError}
			case leftOut:
				return &ExitError{Code: ExitRulesLeftOut}
			}
			return nil
		},
	}
	fss = installFlags(cmd, o, base, logging)
	fss.FlagSet("metrics").StringArrayVar(&ruleFiles, "metric-rule-file", nil,
		"YAML file of MetricRule objects to check as the adapter serves them with --metric-rules (repeatable).")
	cmd.Flags().AddFlagSet(fss.FlagSet("metrics"))
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, moveFirst(fss, "metrics"), cols)
	return cmd
}

// checkMetricRules compiles the MetricRules of files as the adapter does,
// prints what became of each, and adds the accepted ones to set. It
// reports whether one was refused, and whether one is over its
// namespace's limit.
func (o *Options) checkMetricRules(w io.Writer, files []string, set *rules.Set) (refused, overLimit bool, err error) {
	var objs []*v1alpha1.MetricRule
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return false, false, fmt.Errorf("reading MetricRules: %w", err)
		}
		more, err := metricrules.Decode(data, f)
		if err != nil {
			return false, false, err
		}
		objs = append(objs, more...)
	}
	if len(objs) == 0 {
		return false, false, nil
	}
	outcomes := metricrules.Compile(objs, o.MetricRulesNamespaceLabel, o.MetricRulesPerNamespace, teamBackends(set), metricrules.NewCache())
	fmt.Fprintf(w, "\n%d MetricRules, confined to their namespace's series on the label %q:\n", len(outcomes), o.MetricRulesNamespaceLabel)
	for _, oc := range outcomes {
		name := rules.TeamSection + " " + oc.Object.Namespace + "/" + oc.Object.Name
		switch {
		case oc.OverLimit:
			overLimit = true
			fmt.Fprintf(w, "  %s: over the limit: its namespace has %d older MetricRules (--metric-rules-per-namespace)\n", name, o.MetricRulesPerNamespace)
		case oc.Err != nil:
			refused = true
			fmt.Fprintf(w, "  %s: refused: %v\n", name, oc.Err)
		default:
			fmt.Fprintf(w, "  %s: accepted (%s), seriesQuery as listed: %s\n", name, oc.Object.Spec.API, oc.Rule.SeriesQuery())
		}
	}
	custom, external := metricrules.Accepted(outcomes)
	set.Custom, set.External = append(set.Custom, custom...), append(set.External, external...)
	return refused, overLimit, nil
}

func sourceName(path string) string {
	if path == "" {
		return config.DefaultSource
	}
	return path
}

// loadRules reads and compiles a rules file, or the built-in rules for "".
func loadRules(path string) (*rules.Set, error) {
	if path == "" {
		return rules.Parse(config.DefaultYAML(), config.DefaultSource)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return rules.Parse(data, path)
}

func printSummary(w io.Writer, source string, set *rules.Set) {
	res := "none"
	if set.Resource != nil {
		res = fmt.Sprintf("cpu and memory, window %v", set.Resource.Window)
	}
	fmt.Fprintf(w, "%s: valid: %d rules, %d externalRules, resourceRules: %s\n", source, len(set.Custom), len(set.External), res)
	for _, r := range append(slices.Clone(set.Custom), set.External...) {
		if r.EmptyIsZero() {
			fmt.Fprintf(w, "%s: emptyIsZero: what Prometheus has no series for is answered 0\n", r)
		}
	}
	if left := set.LeftOut(); len(left) > 0 {
		fmt.Fprintf(w, "%d rules are left out: the adapter starts without them, and answers their metrics 404 saying why:\n", len(left))
		for _, r := range left {
			fmt.Fprintf(w, "  %s: %v\n", r, r.LeftOut())
		}
	}
}

// checkDiscovery lists the rules' series once, as discovery does, and
// prints what each rule serves. It reports whether a listing failed.
func (o *Options) checkDiscovery(ctx context.Context, w io.Writer, set *rules.Set, mapper apimeta.RESTMapper) (bool, error) {
	stores, err := o.stores(set)
	if err != nil {
		return false, err
	}
	c := &components{opts: o}
	c.stores.Store(stores)
	prom := stores.Store("").Client
	custom := custommetrics.New(custommetrics.Config{Rules: set.Custom, Mapper: mapper, Querier: prom, Backends: c.querier})
	external := externalmetrics.New(externalmetrics.Config{Rules: set.External, Querier: prom, Backends: c.querier})
	c.custom, c.external = custom, external
	// check-config reads no namespaces: the series of a store with a
	// tenant per namespace are not listed (the adapter lists each
	// tenant's), and its rules say so.
	queries := c.seriesQueries(set)
	queries.File = slices.DeleteFunc(queries.File, func(key string) bool {
		backend, _ := rules.SplitListing(key)
		return stores.Store(backend).Tenancy != nil
	})
	disc := discovery.New(o.discoveryConfig(queries, prom, c.lister))
	disc.Subscribe(custom.Update)
	disc.Subscribe(external.Update)
	for _, warning := range o.Warnings() {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
	start := time.Now()
	r := disc.Relist(ctx)
	var at []string
	for _, name := range stores.Names() {
		at = append(at, name+" "+stores.Store(name).URL)
	}
	fmt.Fprintf(w, "\nDiscovery on %s: %d seriesQueries, %d failed, %v\n", strings.Join(at, ", "), len(r.Series)+len(missing(r)), len(r.Failed), time.Since(start).Round(time.Millisecond))

	customServed, customOverlaps := custom.Served()
	printRules(w, stores, set.Custom, r, customServed, customOverlaps)
	extServed, extOverlaps := external.Served()
	printRules(w, stores, set.External, r, extServed, extOverlaps)
	if overlaps := append(customOverlaps, extOverlaps...); len(overlaps) > 0 {
		fmt.Fprintf(w, "\nOverlaps (the first rule in the file serves the metric):\n")
		for _, ov := range overlaps {
			what := "external metric"
			if ov.Resource != "" {
				what = ov.Metric + " on " + ov.Resource
			}
			fmt.Fprintf(w, "  %s: %s serves it, %s is ignored\n", what, ov.Kept, ov.Ignored)
		}
	}
	return len(r.Failed) > 0, nil
}

// printRules prints what each rule of one section serves, or why it
// serves nothing.
func printRules(w io.Writer, stores *backends.Set, rs []*rules.Rule, r discovery.Result, served []catalog.Served, overlaps []catalog.Overlap) {
	for _, rule := range rs {
		tenancy := stores.Store(rule.Backend()).Tenancy
		tenant := ""
		if tenancy != nil {
			tenant = fmt.Sprintf(", tenant %s of the request's namespace, in %s", tenancy.Template(), tenancy.Carrier())
		}
		fmt.Fprintf(w, "\n%s (seriesQuery %s, backend %s%s)\n", rule, rule.SeriesQuery(), backendName(rule.Backend()), tenant)
		ss := slices.DeleteFunc(slices.Clone(served), func(s catalog.Served) bool { return s.Rule != rule })
		shadowed := slices.ContainsFunc(overlaps, func(ov catalog.Overlap) bool { return ov.Ignored.Rule == rule })
		switch err := r.Failed[rule.Listing()]; {
		case tenancy != nil:
			fmt.Fprintf(w, "  not listed: its store has a tenant per namespace, and check-config reads no namespaces (the adapter lists each tenant's series)\n")
		case err != nil:
			fmt.Fprintf(w, "  listing failed: %v\n", err)
		case rule.LeftOut() != nil:
			fmt.Fprintf(w, "  left out: %v\n", rule.LeftOut())
		case len(ss) == 0 && shadowed:
			fmt.Fprintf(w, "  serves nothing: an earlier rule serves all its metrics (see Overlaps)\n")
		case len(ss) == 0 && !rule.External():
			fmt.Fprintf(w, "  serves nothing: %d series match its seriesQuery, none gives a metric name with a resource label\n", len(r.Series[rule.Listing()]))
		case len(ss) == 0:
			fmt.Fprintf(w, "  serves nothing: %d series match its seriesQuery\n", len(r.Series[rule.Listing()]))
		default:
			for _, line := range perMetric(ss) {
				fmt.Fprintf(w, "  %s\n", line)
			}
		}
		fmt.Fprintf(w, "  no series: %s\n", noSeries(rule))
	}
}

// teamBackends are the stores of a rules file that take MetricRules.
func teamBackends(set *rules.Set) []string {
	var out []string
	for _, b := range set.Backends {
		if b.Teams {
			out = append(out, b.Name)
		}
	}
	return out
}

// backendName names a store as the rules file does: "default" for the
// flags'.
func backendName(name string) string {
	if name == "" {
		return config.DefaultBackend
	}
	return name
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

// noSeries says what the rule answers when Prometheus has no series.
func noSeries(r *rules.Rule) string {
	switch {
	case r.EmptyIsZero():
		return "0 (emptyIsZero)"
	case r.External():
		return "an empty list (the HPA reports FailedGetExternalMetric; emptyIsZero answers 0)"
	default:
		return "404 for the object"
	}
}

// perMetric writes one line per metric with its resources, marking those
// served through their pods and those of root-scoped objects; external
// metrics, which have no resource, on one line.
func perMetric(ss []catalog.Served) []string {
	var lines, external []string
	var metric string
	var resources []string
	flush := func() {
		if metric != "" {
			lines = append(lines, fmt.Sprintf("%s: %s", metric, strings.Join(resources, ", ")))
		}
	}
	for _, s := range ss {
		if s.Resource == "" {
			external = append(external, s.Metric)
			continue
		}
		if s.Metric != metric {
			flush()
			metric, resources = s.Metric, nil
		}
		r := s.Resource
		if s.Note != "" {
			r += " (" + s.Note + ")"
		}
		resources = append(resources, r)
	}
	flush()
	if len(external) > 0 {
		lines = append(lines, "external metrics: "+strings.Join(external, ", "))
	}
	return lines
}
