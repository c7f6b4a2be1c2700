package adapter

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/backends"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/externalmetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metricrules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resourcemetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/upstream"
)

// components are the parts that answer requests: the Prometheus client,
// the informer caches, one provider per enabled API, and the discovery
// loop feeding the custom and external providers. The server, `adapter
// explain` and a rules reload share them.
type components struct {
	restConfig *rest.Config
	prom       *promclient.Client
	mapper     apimeta.RESTMapper
	// refresher rediscovers the cluster's resource types for mapper, every
	// --discovery-interval.
	refresher mapperRefresher
	resolver  *resolver.Resolver
	custom    *custommetrics.Provider
	external  *externalmetrics.Provider
	resource  *resourcemetrics.Provider
	disc      *discovery.Discoverer
	apis      []string
	// ups are the other metrics servers of the groups (--upstreams);
	// empty without.
	ups *upstream.Set
	// sources are the rules served: the file's and the MetricRules';
	// metricRules watches the latter (nil without --metric-rules), and
	// budgets bound their queries.
	sources     ruleSources
	metricRules *metricrules.Controller
	budgets     *query.Budgets
	// sharing shares queries across requests (--shared-query-max-age);
	// nil when off.
	sharing *query.Sharing
	dynamic dynamic.Interface
	kube    kubernetes.Interface
	// events records Events on MetricRules (nil without --metric-rules).
	events record.EventBroadcaster
	// stores are the stores the rules read, swapped with the rules file;
	// prom is the default one's client; opts built them.
	stores atomic.Pointer[backends.Set]
	// tenants maps namespaces to their tenants on the stores with a
	// tenant per namespace, from the resolver's namespace cache.
	tenants *backends.Tenants
	opts    *Options
}

// querier is the client of the store a rule names, as the rules file
// now names it; nil for one it does not.
func (c *components) querier(name string) promclient.Querier {
	return c.stores.Load().Querier(name)
}

// lister is querier for discovery.
func (c *components) lister(name string) discovery.SeriesLister {
	if st := c.stores.Load().Store(name); st != nil {
		return st.Client
	}
	return nil
}

// stores builds the stores of a rules file: the default one from the
// flags, the named ones from the file's backends section.
func (o *Options) stores(set *rules.Set) (*backends.Set, error) {
	where := set.BackendWhere
	if where == nil {
		where = func(i int, field string) string { return fmt.Sprintf("backends[%d].%s", i, field) }
	}
	return backends.New(o.DefaultBackend(), set.Backends, where)
}

// ruleSources are the rules served: the rules file's, then the accepted
// MetricRules of every namespace. A reload of the file and a change of
// MetricRules each swap their part, one at a time, through apply.
type ruleSources struct {
	mu               sync.Mutex
	file             *rules.Set
	custom, external []*rules.Rule
}

// merged is the file's rules followed by the MetricRules'.
func (s *ruleSources) merged() *rules.Set {
	return &rules.Set{
		Custom:   append(slices.Clip(s.file.Custom), s.custom...),
		External: append(slices.Clip(s.file.External), s.external...),
		Resource: s.file.Resource,
	}
}

// teamBackends are the stores of the rules file now served that take
// MetricRules.
func (c *components) teamBackends() []string {
	c.sources.mu.Lock()
	defer c.sources.mu.Unlock()
	return teamBackends(c.sources.file)
}

// setFile serves a reloaded rules file, with the MetricRules, and its
// stores (compileRules built and checked them).
func (c *components) setFile(ctx context.Context, set *rules.Set) {
	c.sources.mu.Lock()
	defer c.sources.mu.Unlock()
	if stores, err := c.opts.stores(set); err == nil {
		// The default store's client stays: the flags did not change.
		c.stores.Store(stores)
	}
	c.sources.file = set
	c.apply(ctx, c.sources.merged())
}

// setMetricRules serves the accepted MetricRules, after the file's rules.
func (c *components) setMetricRules(ctx context.Context, custom, external []*rules.Rule) {
	c.sources.mu.Lock()
	defer c.sources.mu.Unlock()
	c.sources.custom, c.sources.external = custom, external
	c.apply(ctx, c.sources.merged())
}

// observe hands the MetricRules controller what a discovery round made of
// the rules, for their status.
func (c *components) observe(r discovery.Result) {
	obs := metricrules.Observation{Round: r, Dropped: map[*rules.Rule]int{}}
	if c.custom != nil {
		obs.Served, obs.Overlaps = c.custom.Served()
		maps.Copy(obs.Dropped, c.custom.Dropped())
	}
	if c.external != nil {
		served, overlaps := c.external.Served()
		obs.Served, obs.Overlaps = append(obs.Served, served...), append(obs.Overlaps, overlaps...)
		maps.Copy(obs.Dropped, c.external.Dropped())
	}
	c.metricRules.Observe(obs)
}

// build creates the components for the compiled rules. Nothing runs until
// the resolver and the discovery loop are started.
func (o *Options) build(base *basecmd.AdapterBase, set *rules.Set) (*components, error) {
	c, err := o.clients(base, set)
	if err != nil {
		return nil, err
	}

	// An API is served when it is enabled and the rules file has its
	// section; otherwise its APIService would be answered with nothing
	// but errors. One discovery loop lists the series of the custom and
	// external rules for both providers.
	c.sources.file = set
	if o.MetricRules {
		c.budgets = query.NewBudgets(o.MetricRulesMaxConcurrentQueries, o.MetricRulesQueryTimeout)
	}
	served := o.servedAPIs(set)
	if served == (apis{}) && c.ups.Empty() {
		return nil, fmt.Errorf("no metrics API to serve: every API whose section the rules file has is turned off (--enable-custom-metrics, --enable-external-metrics, --enable-resource-metrics)")
	}
	if o.SharedQueryMaxAge > 0 {
		c.sharing = query.NewSharing(query.Stores{Default: c.prom, Named: c.querier, Tenant: c.tenants.Of}, o.SharedQueryMaxAge)
	}
	if served.custom {
		c.custom = custommetrics.New(custommetrics.Config{
			Rules:                      set.Custom,
			Mapper:                     c.mapper,
			Querier:                    c.prom,
			Backends:                   c.querier,
			Tenant:                     c.tenants.Of,
			Resolver:                   c.resolver,
			MaxConcurrentObjectQueries: o.MaxConcurrentObjectQueries,
			Upstream:                   c.upstreamList(upstream.CustomGroup),
			Budgets:                    c.budgets,
			Sharing:                    c.sharing,
		})
		c.apis = append(c.apis, "custom.metrics.k8s.io")
	}
	if served.external {
		c.external = externalmetrics.New(externalmetrics.Config{Rules: set.External, Querier: c.prom, Backends: c.querier, Tenant: c.tenants.Of,
			Upstream: c.upstreamList(upstream.ExternalGroup), Budgets: c.budgets, Sharing: c.sharing})
		c.apis = append(c.apis, "external.metrics.k8s.io")
	}
	dcfg := o.discoveryConfig(c.seriesQueries(set), c.prom, c.lister)
	dcfg.Tenants, dcfg.TenantOf = c.tenants.All, c.tenants.Of
	c.disc = discovery.New(dcfg)
	if c.custom != nil {
		c.disc.Subscribe(func(r discovery.Result) {
			c.custom.Update(r)
			c.resolver.Retain(c.custom.Resources())
		})
	}
	if c.external != nil {
		c.disc.Subscribe(c.external.Update)
	}
	if o.MetricRules {
		if c.dynamic, err = dynamic.NewForConfig(c.restConfig); err != nil {
			return nil, fmt.Errorf("creating the client of MetricRules: %w", err)
		}
		le, err := o.leaderElection(c.kube)
		if err != nil {
			return nil, err
		}
		c.events = record.NewBroadcaster(record.WithContext(context.Background()))
		c.metricRules = metricrules.NewController(metricrules.ControllerConfig{
			Client: c.dynamic, NamespaceLabel: o.MetricRulesNamespaceLabel, PerNamespace: o.MetricRulesPerNamespace,
			Apply: c.setMetricRules, Budgets: c.budgets, LeaderElection: le, Backends: c.teamBackends,
			Events: c.events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: Name}),
		})
		c.disc.Subscribe(c.observe) // after the providers: their catalogs are this round's
	}
	if served.resource {
		c.resource = resourcemetrics.New(resourcemetrics.Config{Rules: set.Resource, Querier: c.prom, Backends: c.querier, Tenant: c.tenants.Of, Objects: c.resolver})
		c.apis = append(c.apis, "metrics.k8s.io")
	}
	return c, nil
}

// apis says which metrics APIs are served.
type apis struct{ custom, external, resource bool }

// servedAPIs are the APIs that are enabled and have a section in the
// rules file. The others are not served, and the log says why.
func (o *Options) servedAPIs(set *rules.Set) apis {
	a := apis{
		custom:   o.EnableCustomMetrics && (len(set.Custom) > 0 || o.MetricRules),
		external: o.EnableExternalMetrics && (len(set.External) > 0 || o.MetricRules),
		resource: o.EnableResourceMetrics && set.Resource != nil,
	}
	for _, api := range []struct {
		enabled, served bool
		name, section   string
	}{
		{o.EnableCustomMetrics, a.custom, "custom.metrics.k8s.io", "rules"},
		{o.EnableExternalMetrics, a.external, "external.metrics.k8s.io", "externalRules"},
		{o.EnableResourceMetrics, a.resource, "metrics.k8s.io", "resourceRules"},
	} {
		switch {
		case !api.enabled || api.served:
		case api.section == "resourceRules":
			klog.InfoS("Not serving an API: the rules file has no section for it (add it and restart, or remove its APIService)", "api", api.name, "section", api.section)
		default:
			klog.InfoS("Not serving an API: the rules file has no section for it, and --metric-rules is off (add either and restart, or remove its APIService)", "api", api.name, "section", api.section)
		}
	}
	return a
}

// clients builds the Prometheus client, the REST mapper and the resolver
// over the Kubernetes clients.
func (o *Options) clients(base *basecmd.AdapterBase, set *rules.Set) (*components, error) {
	if base.DiscoveryInterval <= 0 {
		// The library would refresh the REST mapper back to back.
		return nil, fmt.Errorf("--discovery-interval must be positive, got %v", base.DiscoveryInterval)
	}
	stores, err := o.stores(set)
	if err != nil {
		return nil, err
	}
	c := &components{opts: o}
	c.stores.Store(stores)
	c.prom = stores.Store("").Client
	restCfg, err := base.ClientConfig()
	if err != nil {
		return nil, err
	}
	c.restConfig = restCfg
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	c.kube = kube
	meta, err := metadata.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes metadata client: %w", err)
	}
	if c.mapper, err = base.RESTMapper(); err != nil {
		return nil, fmt.Errorf("building the REST mapper: %w", err)
	}
	var ok bool
	if c.refresher, ok = c.mapper.(mapperRefresher); !ok {
		return nil, fmt.Errorf("the REST mapper (%T) cannot be refreshed: --discovery-interval would do nothing", c.mapper)
	}
	c.resolver = resolver.New(kube, meta, c.mapper)
	c.tenants = &backends.Tenants{
		Stores: c.stores.Load,
		Namespace: func(ctx context.Context, name string) (backends.Namespace, error) {
			m, err := c.resolver.GetMetadata(ctx, resolver.Namespaces, "", name)
			if err != nil {
				return backends.Namespace{}, err
			}
			return backends.Namespace{Name: m.Name, Labels: m.Labels, Annotations: m.Annotations}, nil
		},
		List: func(ctx context.Context) ([]backends.Namespace, error) {
			ms, err := c.resolver.Metadata(ctx, resolver.Namespaces, "", labels.Everything())
			if err != nil {
				return nil, err
			}
			out := make([]backends.Namespace, len(ms))
			for i, m := range ms {
				out[i] = backends.Namespace{Name: m.Name, Labels: m.Labels, Annotations: m.Annotations}
			}
			return out, nil
		},
	}
	if o.UpstreamsFile != "" {
		specs, err := upstream.Load(o.UpstreamsFile)
		if err != nil {
			return nil, err
		}
		if c.ups, err = upstream.New(specs, o.UpstreamTimeout, o.UpstreamDiscoveryInterval); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// upstreamList lists what the upstreams serve of group, for discovery; nil
// without upstreams.
func (c *components) upstreamList(group string) func() []metav1.APIResource {
	if c.ups.Empty() {
		return nil
	}
	return func() []metav1.APIResource { return c.ups.Resources(group) }
}

// seriesQueries are the distinct seriesQuery selectors of the rules the
// enabled providers serve: the file's, and the rule objects'.
func (c *components) seriesQueries(set *rules.Set) discovery.Queries {
	var rs []*rules.Rule
	if c.custom != nil {
		rs = append(rs, set.Custom...)
	}
	if c.external != nil {
		rs = append(rs, set.External...)
	}
	return discovery.QueriesOf(rs)
}

// discoveryConfig is discovery's configuration from the flags.
func (o *Options) discoveryConfig(q discovery.Queries, lister discovery.SeriesLister, named func(string) discovery.SeriesLister) discovery.Config {
	return discovery.Config{
		Backends:    named,
		Queries:     q.File,
		TeamQueries: q.Team,
		Team: discovery.TeamLimits{
			MaxConcurrent: TeamConcurrentListings,
			Timeout:       o.MetricRulesDiscoveryTimeout,
			MaxSeries:     o.MetricRulesMaxSeries,
		},
		Lister:   lister,
		Interval: o.MetricsRelistInterval,
		MaxAge:   o.MetricsMaxAge,
		Timeout:  o.DiscoveryTimeout,
	}
}

// TeamConcurrentListings is how many MetricRules' series listings run at
// once, beside the rules file's (--discovery-timeout's four).
const TeamConcurrentListings = 2

// apply switches every provider to a reloaded rules set: the new rules'
// series are listed first, then each provider swaps its rules and metric
// index at once. Requests in flight finish with the old rules; none waits.
func (c *components) apply(ctx context.Context, set *rules.Set) {
	c.disc.Reconfigure(ctx, c.seriesQueries(set), func(r discovery.Result) {
		if c.custom != nil {
			c.custom.SetRules(set.Custom, r)
			// Resources no rule serves any more are not watched.
			c.resolver.Retain(c.custom.Resources())
		}
		if c.external != nil {
			c.external.SetRules(set.External, r)
		}
		if c.sharing != nil {
			// The old rules' shared queries go with them.
			c.sharing.Reset()
		}
		if c.metricRules != nil {
			c.observe(r)
		}
	})
	if c.resource != nil {
		c.resource.SetRules(set.Resource)
	}
	if added := (apis{custom: len(set.Custom) > 0 && c.custom == nil, external: len(set.External) > 0 && c.external == nil,
		resource: set.Resource != nil && c.resource == nil}); added != (apis{}) {
		klog.InfoS("The reloaded rules have a section for an API the adapter does not serve: it is served after a restart",
			"rules", added.custom, "externalRules", added.external, "resourceRules", added.resource)
	}
}

// explainProviders are the providers `explain` runs requests against.
func (c *components) explainProviders() explain.Providers {
	var p explain.Providers
	if c.custom != nil {
		p.Custom = c.custom
	}
	if c.external != nil {
		p.External = c.external
	}
	if c.resource != nil {
		p.Resource = c.resource
	}
	if !c.ups.Empty() {
		p.Upstreams = &router{c: c, ups: c.ups}
	}
	return p
}

// mapperRefresher is custom-metrics-apiserver's regenerating REST mapper:
// RunUntil rediscovers resource types at its interval until stop closes.
type mapperRefresher interface {
	RunUntil(stop <-chan struct{})
}
