package adapter

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/term"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metricrules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// Exit codes of the subcommands, for scripts.
const (
	// ExitFailed: the command could not do its work (bad flags, a rules
	// file that does not load, no cluster).
	ExitFailed = 1
	// ExitAnswerError: explain ran the request and the API answers it
	// with an error; check-config could not list a rule's series.
	ExitAnswerError = 3
	// ExitRulesLeftOut: check-config found rules the adapter would leave
	// out (it starts without them).
	ExitRulesLeftOut = 4
)

// ExitError ends the program with Code after printing Err, if any.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// explainWait bounds the wait for the pod cache and the first discovery
// round before a request is explained.
const explainWait = time.Minute

// explainHelp is the explain command's description.
const explainHelp = `explain runs one metrics request (custom, external or resource metrics) the
way the adapter serves it, with the adapter's own flags (--config, the Prometheus flags,
--lister-kubeconfig; with --metric-rules, the cluster's MetricRules too), and prints:

  the rule that serves the metric (and the series it comes from),
  the objects and pods it resolved from the cluster,
  the PromQL it rendered,
  Prometheus' raw answer: series, values, timestamps and how old they are,
  the values the API answers with, or its error, with the HTTP code.

REQUEST is one of
  RESOURCE[.GROUP]/METRIC        every object -l selects (an HPA's Pods metric:
                                 pods/requests-per-second -l app=app)
  RESOURCE[.GROUP]/NAME/METRIC   one object (an Object metric:
                                 ingresses.networking.k8s.io/main-route/requests-per-second)
  namespaces/NAME/METRIC         a namespace's metric
  external/METRIC                an external metric (--metric-selector is the
                                 HPA's metric.selector)
  pods.metrics.k8s.io[/NAME]     the CPU and memory of pods (kubectl top pod)
  nodes.metrics.k8s.io[/NAME]    the CPU and memory of nodes (kubectl top node)

A running adapter serves the same report to authorized callers at
/debug/explain/<API path> (--enable-explain-endpoint). The aggregator does
not proxy /debug paths: reach the adapter itself, e.g.
  kubectl -n custom-metrics port-forward svc/custom-metrics-apiserver 8443:443 &
  curl -k -H "Authorization: Bearer $(kubectl create token NAME)" \
    'https://127.0.0.1:8443/debug/explain/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second?labelSelector=app%3Dapp'
(the token's user needs get on the non-resource URL /debug/explain/*, and
what the request explained needs: a caller who may not read a metric may
not read its report either).

Exit status: 0 when the API answers 200, 3 when it answers an error (the
report says which and why), 1 when the request could not be run.`

func newExplainCommand(ctx context.Context) *cobra.Command {
	o := NewOptions()
	logging := logsapi.NewLoggingConfiguration()
	base := &basecmd.AdapterBase{Name: Name}
	var namespace, selector, metricSelector string

	var fss cliflag.NamedFlagSets
	cmd := &cobra.Command{
		Use:           "explain [adapter flags] REQUEST [-n NAMESPACE] [-l SELECTOR] [--metric-selector SELECTOR]",
		Short:         "Explain one metrics request: the rule, the objects, the PromQL, Prometheus' answer and the API's",
		Long:          explainHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := explain.ParseArgs(args[0], namespace, selector, metricSelector)
			if err != nil {
				return err
			}
			if errs := o.Validate(); len(errs) > 0 {
				return utilerrors.NewAggregate(errs)
			}
			if err := applyLogging(cmd, logging, fss.FlagSet("logging")); err != nil {
				return err
			}
			return o.explain(ctx, cmd.OutOrStdout(), base, req)
		},
	}
	fss = installFlags(cmd, o, base, logging)
	fs := fss.FlagSet("explain")
	fs.StringVarP(&namespace, "namespace", "n", "default", "Namespace of the request (ignored for nodes and namespaces).")
	fs.StringVarP(&selector, "selector", "l", "", "Label selector of the objects, for RESOURCE/METRIC requests (an HPA's scaleTargetRef selector).")
	fs.StringVar(&metricSelector, "metric-selector", "", "Metric label selector (the HPA's metric.selector).")
	cmd.Flags().AddFlagSet(fs)
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, moveFirst(fss, "explain"), cols)
	return cmd
}

// explain runs req in-process with the adapter's own flags and prints the
// report.
func (o *Options) explain(ctx context.Context, w io.Writer, base *basecmd.AdapterBase, req explain.Request) error {
	set, err := o.loadRules()
	if err != nil {
		return err
	}
	c, err := o.build(base, set)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if req.API == explain.Custom && req.Namespace != "" && !namespaced(c.mapper, req.Resource) {
		req.Namespace = "" // a cluster-scoped resource: -n does not apply
	}
	c.resolver.Start(ctx)
	wctx, wcancel := context.WithTimeout(ctx, explainWait)
	defer wcancel()
	if req.API != explain.External && !c.resolver.WaitForPods(wctx) {
		return fmt.Errorf("the pod cache did not fill within %v: %w", explainWait, c.resolver.PodCacheError())
	}
	if o.MetricRules {
		// The cluster's MetricRules, as the adapter serves them.
		objs, err := metricrules.List(ctx, c.dynamic)
		if err != nil {
			return err
		}
		outcomes := metricrules.Compile(objs, o.MetricRulesNamespaceLabel, o.MetricRulesPerNamespace, teamBackends(set), metricrules.NewCache())
		custom, external := metricrules.Accepted(outcomes)
		c.setMetricRules(ctx, custom, external) // lists every rule's series
	} else {
		c.disc.Relist(ctx)
	}
	rep := explain.Run(ctx, c.explainProviders(), req)
	if err := rep.Write(w); err != nil {
		return err
	}
	if rep.Code != 200 {
		return &ExitError{Code: ExitAnswerError}
	}
	return nil
}

// moveFirst puts the named flag set first in --help.
func moveFirst(fss cliflag.NamedFlagSets, name string) cliflag.NamedFlagSets {
	order := []string{name}
	for _, n := range fss.Order {
		if n != name {
			order = append(order, n)
		}
	}
	fss.Order = order
	return fss
}

// applyLogging applies the logging flags of a subcommand when one was
// given: the logging configuration can be applied once per process.
func applyLogging(cmd *cobra.Command, logging *logsapi.LoggingConfiguration, fs *pflag.FlagSet) error {
	changed := false
	fs.VisitAll(func(f *pflag.Flag) {
		changed = changed || cmd.Flags().Changed(f.Name)
	})
	if !changed {
		return nil
	}
	if err := logsapi.ValidateAndApply(logging, nil); err != nil {
		return fmt.Errorf("logging flags: %w", err)
	}
	return nil
}

// namespaced reports whether gr is namespaced; resources the mapper does
// not know count as namespaced, as the API would serve them.
func namespaced(mapper apimeta.RESTMapper, gr schema.GroupResource) bool {
	ns, known := rules.Scope(mapper, gr)
	return !known || ns
}
