package adapter

import (
	"context"
	"fmt"
	"slices"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/klog/v2"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/externalmetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resourcemetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// components are the parts that answer requests: the Prometheus client,
// the informer caches, one provider per enabled API, and the discovery
// loop feeding the custom and external providers. The server, `adapter
// explain` and a rules reload share them.
type components struct {
	prom   *promclient.Client
	mapper apimeta.RESTMapper
	// refresher rediscovers the cluster's resource types for mapper, every
	// --discovery-interval.
	refresher mapperRefresher
	resolver  *resolver.Resolver
	custom    *custommetrics.Provider
	external  *externalmetrics.Provider
	resource  *resourcemetrics.Provider
	disc      *discovery.Discoverer
	apis      []string
}

// build creates the components for the compiled rules. Nothing runs until
// the resolver and the discovery loop are started.
func (o *Options) build(base *basecmd.AdapterBase, set *rules.Set) (*components, error) {
	promCfg, err := o.PrometheusClientConfig()
	if err != nil {
		return nil, err
	}
	c := &components{}
	if c.prom, err = promclient.New(promCfg); err != nil {
		return nil, err
	}
	restCfg, err := base.ClientConfig()
	if err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
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

	// One discovery loop lists the series of the custom and external
	// rules for both providers.
	if o.EnableCustomMetrics {
		c.custom = custommetrics.New(custommetrics.Config{
			Rules:                      set.Custom,
			Mapper:                     c.mapper,
			Querier:                    c.prom,
			Resolver:                   c.resolver,
			MaxConcurrentObjectQueries: o.MaxConcurrentObjectQueries,
		})
		c.apis = append(c.apis, "custom.metrics.k8s.io")
	}
	if o.EnableExternalMetrics {
		c.external = externalmetrics.New(externalmetrics.Config{Rules: set.External, Querier: c.prom})
		c.apis = append(c.apis, "external.metrics.k8s.io")
	}
	c.disc = discovery.New(discovery.Config{
		Queries:  c.seriesQueries(set),
		Lister:   c.prom,
		Interval: o.MetricsRelistInterval,
		MaxAge:   o.MetricsMaxAge,
		Timeout:  o.DiscoveryTimeout,
	})
	if c.custom != nil {
		c.disc.Subscribe(func(r discovery.Result) {
			c.custom.Update(r)
			c.resolver.Retain(c.custom.Resources())
		})
	}
	if c.external != nil {
		c.disc.Subscribe(c.external.Update)
	}
	if o.EnableResourceMetrics {
		c.resource = resourcemetrics.New(resourcemetrics.Config{Rules: set.Resource, Querier: c.prom, Objects: c.resolver})
		c.apis = append(c.apis, "metrics.k8s.io")
		if set.Resource == nil {
			klog.InfoS("The config has no resourceRules: metrics.k8s.io answers every request 503 until they are added")
		}
	}
	return c, nil
}

// seriesQueries are the distinct seriesQuery selectors of the rules the
// enabled providers serve.
func (c *components) seriesQueries(set *rules.Set) []string {
	var rs []*rules.Rule
	if c.custom != nil {
		rs = append(rs, set.Custom...)
	}
	if c.external != nil {
		rs = append(rs, set.External...)
	}
	var out []string
	for _, r := range rs {
		if !slices.Contains(out, r.SeriesQuery()) {
			out = append(out, r.SeriesQuery())
		}
	}
	return out
}

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
	})
	if c.resource != nil {
		c.resource.SetRules(set.Resource)
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
	return p
}

// mapperRefresher is custom-metrics-apiserver's regenerating REST mapper:
// RunUntil rediscovers resource types at its interval until stop closes.
type mapperRefresher interface {
	RunUntil(stop <-chan struct{})
}
