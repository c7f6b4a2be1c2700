package metricrules

import (
	"context"
	"errors"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	Client dynamic.Interface
	// NamespaceLabel is the series label holding the namespace, which a
	// rule's queries are confined to.
	NamespaceLabel string
	// PerNamespace is how many rules of one namespace are served (0: no
	// limit).
	PerNamespace int
	// Apply serves the accepted rules of every namespace (custom and
	// external), after the rules file's, and returns once they serve.
	Apply func(ctx context.Context, custom, external []*rules.Rule)
	// Budgets hold each rule's last failed query, for its status.
	Budgets *query.Budgets
}

// settle is how long a change waits for the ones that follow it (kubectl
// apply of many rules) before the rules are recompiled.
const settle = 300 * time.Millisecond

// Controller watches MetricRules, serves the accepted ones through Apply,
// and writes their status.
type Controller struct {
	cfg      ControllerConfig
	informer cache.SharedIndexInformer
	cache    *Cache
	changed  chan struct{}
	observed chan struct{}

	mu       sync.Mutex
	outcomes []Outcome
	obs      *Observation
	served   bool
}

// NewController returns a Controller; nothing runs until Run.
func NewController(cfg ControllerConfig) *Controller {
	c := &Controller{
		cfg:      cfg,
		cache:    NewCache(),
		changed:  make(chan struct{}, 1),
		observed: make(chan struct{}, 1),
		informer: dynamicinformer.NewFilteredDynamicInformer(cfg.Client, v1alpha1.Resource, metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer(),
	}
	notify := func(any) { signal(c.changed) }
	_, _ = c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: notify, DeleteFunc: notify,
		UpdateFunc: func(old, cur any) {
			// Status writes (ours) change neither spec nor generation.
			o, ok1 := old.(*unstructured.Unstructured)
			n, ok2 := cur.(*unstructured.Unstructured)
			if !ok1 || !ok2 || o.GetGeneration() != n.GetGeneration() || o.GetUID() != n.GetUID() {
				signal(c.changed)
			}
		},
	})
	return c
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Observe hands the controller a discovery round's outcome; statuses are
// written from it in the background.
func (c *Controller) Observe(obs Observation) {
	c.mu.Lock()
	c.obs = &obs
	c.mu.Unlock()
	signal(c.observed)
}

// Run watches MetricRules until ctx is done.
func (c *Controller) Run(ctx context.Context) {
	go c.informer.Run(ctx.Done())
	klog.InfoS("Watching MetricRules", "resource", v1alpha1.Resource.String(), "namespaceLabel", c.cfg.NamespaceLabel, "perNamespace", c.cfg.PerNamespace)
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return
	}
	c.sync(ctx)
	var settled <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.changed:
			if settled == nil {
				settled = time.After(settle)
			}
		case <-settled:
			settled = nil
			c.sync(ctx)
		case <-c.observed:
			c.writeStatuses(ctx)
		}
	}
}

// sync compiles the MetricRules the informer holds, serves the accepted
// ones, and writes every status.
func (c *Controller) sync(ctx context.Context) {
	var objs []*v1alpha1.MetricRule
	invalid := map[*v1alpha1.MetricRule]error{}
	for _, item := range c.informer.GetStore().List() {
		u, ok := item.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		mr, err := FromUnstructured(u)
		if err != nil {
			// The CRD's schema makes this rare (a field of the wrong
			// type written before the schema was): reported in status.
			mr = &v1alpha1.MetricRule{ObjectMeta: metav1.ObjectMeta{Namespace: u.GetNamespace(), Name: u.GetName(), UID: u.GetUID(),
				Generation: u.GetGeneration(), CreationTimestamp: u.GetCreationTimestamp(), ResourceVersion: u.GetResourceVersion()}}
			invalid[mr] = err
		}
		objs = append(objs, mr)
	}
	c.cache.Retain(objs)
	outcomes := Compile(objs, c.cfg.NamespaceLabel, c.cfg.PerNamespace, c.cache)
	states := map[string]int{}
	names := map[string]bool{}
	for i := range outcomes {
		o := &outcomes[i]
		if err, bad := invalid[o.Object]; bad {
			o.Rule, o.Err = nil, err
		}
		switch {
		case o.OverLimit:
			states["over_limit"]++
		case o.Err != nil:
			states["invalid"]++
			klog.V(2).InfoS("MetricRule not accepted", "metricRule", klog.KObj(o.Object), "err", o.Err)
		default:
			states["accepted"]++
			names[o.Rule.String()] = true
		}
	}
	custom, external := Accepted(outcomes)
	metrics.SetTeamRules(states)
	c.cfg.Budgets.Forget(func(rule string) bool { return names[rule] })
	start := time.Now()
	c.cfg.Apply(ctx, custom, external)
	klog.InfoS("MetricRules served", "accepted", states["accepted"], "invalid", states["invalid"], "overLimit", states["over_limit"],
		"custom", len(custom), "external", len(external), "discovery", time.Since(start).Round(time.Millisecond))
	c.mu.Lock()
	c.outcomes, c.served = outcomes, true
	c.mu.Unlock()
	c.writeStatuses(ctx)
}

// writeStatuses writes the status of every MetricRule whose status
// changed.
func (c *Controller) writeStatuses(ctx context.Context) {
	c.mu.Lock()
	outcomes, obs := c.outcomes, c.obs
	c.mu.Unlock()
	for _, o := range outcomes {
		if ctx.Err() != nil {
			return
		}
		want := Status(o, obs, c.cfg.Budgets)
		if !needsWrite(o.Object.Status, want) {
			continue
		}
		if err := c.writeStatus(ctx, o.Object, want); err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				// Changed or deleted since: the next sync has it.
				klog.V(4).InfoS("MetricRule status not written", "metricRule", klog.KObj(o.Object), "err", err)
				continue
			}
			klog.ErrorS(err, "Writing a MetricRule's status", "metricRule", klog.KObj(o.Object))
			continue
		}
		o.Object.Status = want
	}
}

func (c *Controller) writeStatus(ctx context.Context, mr *v1alpha1.MetricRule, st v1alpha1.MetricRuleStatus) error {
	item, exists, err := c.informer.GetStore().GetByKey(mr.Namespace + "/" + mr.Name)
	if err != nil || !exists {
		return apierrors.NewNotFound(v1alpha1.Resource.GroupResource(), mr.Name)
	}
	cur, ok := item.(*unstructured.Unstructured)
	if !ok || cur.GetUID() != mr.UID {
		return apierrors.NewNotFound(v1alpha1.Resource.GroupResource(), mr.Name)
	}
	status, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&st)
	if err != nil {
		return err
	}
	u := cur.DeepCopy()
	u.Object["status"] = status
	_, err = c.cfg.Client.Resource(v1alpha1.Resource).Namespace(mr.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: "custom-metrics-adapter"})
	return err
}

// Ready is nil once the MetricRules were listed and served.
func (c *Controller) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.served {
		return errors.New("MetricRules not listed and served yet (is the CRD of manifests/metric-rules installed, and may the adapter list them?)")
	}
	return nil
}
