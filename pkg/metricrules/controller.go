package metricrules

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
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
	// Budgets bound the rules' queries; their failures become Events.
	Budgets *query.Budgets
	// Backends lists the stores MetricRules may name now (the rules
	// file's backends with teams: true); nil: none.
	Backends func() []string
	// Events records Events on MetricRules (a failed query); nil: none.
	Events record.EventRecorder
	// LeaderElection elects the one replica that writes status; nil:
	// this replica writes it (a single replica, or tests).
	LeaderElection *LeaderElection
}

// LeaderElection is how the replicas elect the one that writes status.
type LeaderElection struct {
	// Lock is the Lease they hold in turn.
	Lock                                      resourcelock.Interface
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// settle is how long a change waits for the ones that follow it (kubectl
// apply of many rules) before the rules are recompiled.
const settle = 300 * time.Millisecond

// Controller watches MetricRules, serves the accepted ones through Apply,
// and writes their status. Every replica of the adapter runs one and
// serves the same rules; only the elected one writes status, from a
// rate-limited workqueue, so replicas never overwrite each other's view.
// Failed queries are Events, recorded by the replica that ran them.
type Controller struct {
	cfg      ControllerConfig
	informer cache.SharedIndexInformer
	cache    *Cache
	changed  chan struct{}

	mu       sync.Mutex
	outcomes map[string]Outcome // by object key
	byRule   map[string]*v1alpha1.MetricRule
	obs      *Observation
	served   bool
	// queue holds the keys whose status to write, while leading.
	queue workqueue.TypedRateLimitingInterface[string]

	leading atomic.Bool
}

// NewController returns a Controller; nothing runs until Run.
func NewController(cfg ControllerConfig) *Controller {
	c := &Controller{
		cfg:      cfg,
		cache:    NewCache(),
		changed:  make(chan struct{}, 1),
		outcomes: map[string]Outcome{},
		byRule:   map[string]*v1alpha1.MetricRule{},
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
	cfg.Budgets.OnFailure(c.queryFailed)
	return c
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Observe hands the controller a discovery round's outcome; statuses are
// written from it in the background (by the leader).
func (c *Controller) Observe(obs Observation) {
	c.mu.Lock()
	c.obs = &obs
	c.mu.Unlock()
	c.enqueueAll()
}

// Run watches MetricRules until ctx is done, and writes status while this
// replica leads.
func (c *Controller) Run(ctx context.Context) {
	go c.informer.Run(ctx.Done())
	klog.InfoS("Watching MetricRules", "resource", v1alpha1.Resource.String(), "namespaceLabel", c.cfg.NamespaceLabel, "perNamespace", c.cfg.PerNamespace)
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return
	}
	c.sync(ctx)
	go c.writeWhileLeading(ctx)
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
		}
	}
}

// sync compiles the MetricRules the informer holds, serves the accepted
// ones, and queues every status.
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
	var backends []string
	if c.cfg.Backends != nil {
		backends = c.cfg.Backends()
	}
	outcomes := Compile(objs, c.cfg.NamespaceLabel, c.cfg.PerNamespace, backends, c.cache)
	states := map[string]int{}
	byKey := make(map[string]Outcome, len(outcomes))
	byRule := map[string]*v1alpha1.MetricRule{}
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
			klog.V(2).InfoS("MetricRule not accepted", "metricRule", klog.KObj(o.Object), "err", message(o.Err.Error()))
		default:
			states["accepted"]++
			byRule[o.Rule.String()] = o.Object
		}
		byKey[key(o.Object)] = *o
	}
	custom, external := Accepted(outcomes)
	metrics.SetTeamRules(states)
	start := time.Now()
	c.cfg.Apply(ctx, custom, external)
	klog.InfoS("MetricRules served", "accepted", states["accepted"], "invalid", states["invalid"], "overLimit", states["over_limit"],
		"custom", len(custom), "external", len(external), "discovery", time.Since(start).Round(time.Millisecond))
	c.mu.Lock()
	c.outcomes, c.byRule, c.served = byKey, byRule, true
	c.mu.Unlock()
	c.enqueueAll()
}

func key(mr *v1alpha1.MetricRule) string { return mr.Namespace + "/" + mr.Name }

// enqueueAll queues every object's status, when this replica leads.
func (c *Controller) enqueueAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.queue == nil {
		return
	}
	for k := range c.outcomes {
		c.queue.Add(k)
	}
}

// writeWhileLeading takes part in the election until ctx is done, and
// writes status while it leads. Without LeaderElection it leads at once.
func (c *Controller) writeWhileLeading(ctx context.Context) {
	le := c.cfg.LeaderElection
	if le == nil {
		c.lead(ctx)
		return
	}
	for ctx.Err() == nil {
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: le.Lock, LeaseDuration: le.LeaseDuration, RenewDeadline: le.RenewDeadline, RetryPeriod: le.RetryPeriod,
			ReleaseOnCancel: true, Name: "metricrules-status",
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: c.lead,
				OnStoppedLeading: func() {},
				OnNewLeader: func(identity string) {
					klog.InfoS("The replica that writes MetricRule status", "leader", identity, "self", identity == le.Lock.Identity())
				},
			},
		})
		if err != nil {
			klog.ErrorS(err, "MetricRule status: leader election is misconfigured; this replica writes no status")
			return
		}
		elector.Run(ctx) // returns when leadership is lost, or ctx ends
	}
}

// lead writes status, from a rate-limited workqueue, until ctx ends (the
// lease is lost or the adapter stops).
func (c *Controller) lead(ctx context.Context) {
	q := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "metricrules_status"})
	c.mu.Lock()
	c.queue = q
	c.mu.Unlock()
	c.leading.Store(true)
	metrics.SetStatusWriter(true)
	klog.InfoS("This replica writes MetricRule status")
	defer func() {
		c.leading.Store(false)
		metrics.SetStatusWriter(false)
		c.mu.Lock()
		c.queue = nil
		c.mu.Unlock()
		q.ShutDown()
	}()
	c.enqueueAll()
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		for c.writeNext(ctx, q) {
		}
	}, time.Second)
	<-ctx.Done()
}

// writeNext writes the status of the next queued object; false once the
// queue shuts down. A failed write is retried with backoff.
func (c *Controller) writeNext(ctx context.Context, q workqueue.TypedRateLimitingInterface[string]) bool {
	k, shutdown := q.Get()
	if shutdown {
		return false
	}
	defer q.Done(k)
	switch err := c.writeStatus(ctx, k); {
	case err == nil:
		q.Forget(k)
	case apierrors.IsConflict(err):
		// Changed since the informer saw it: written again once it has.
		metrics.ObserveStatusWrite("conflict")
		klog.V(4).InfoS("MetricRule status not written; retrying", "metricRule", k, "err", err)
		q.AddRateLimited(k)
	default:
		metrics.ObserveStatusWrite("error")
		klog.ErrorS(err, "Writing a MetricRule's status; retrying", "metricRule", k, "retries", q.NumRequeues(k))
		q.AddRateLimited(k)
	}
	return true
}

// writeStatus writes the status of the object k if it differs from what
// the informer holds.
func (c *Controller) writeStatus(ctx context.Context, k string) error {
	c.mu.Lock()
	o, ok := c.outcomes[k]
	obs := c.obs
	c.mu.Unlock()
	if !ok {
		return nil // deleted
	}
	item, exists, err := c.informer.GetStore().GetByKey(k)
	if err != nil || !exists {
		return nil // deleted meanwhile
	}
	cur, ok := item.(*unstructured.Unstructured)
	if !ok || cur.GetUID() != o.Object.UID || cur.GetGeneration() != o.Object.Generation {
		return nil // replaced or changed: the next sync queues it again
	}
	var have v1alpha1.MetricRuleStatus
	if st, ok := cur.Object["status"].(map[string]any); ok {
		_ = runtime.DefaultUnstructuredConverter.FromUnstructured(st, &have)
	}
	withCurrent := o
	obj := *o.Object
	obj.Status = have
	withCurrent.Object = &obj
	want := Status(withCurrent, obs)
	if !needsWrite(have, want) {
		return nil
	}
	status, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&want)
	if err != nil {
		return err
	}
	u := cur.DeepCopy()
	u.Object["status"] = status
	if _, err := c.cfg.Client.Resource(v1alpha1.Resource).Namespace(o.Object.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: "custom-metrics-adapter"}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	metrics.ObserveStatusWrite("ok")
	return nil
}

// queryFailed records a failed query of a rule object as an Event on it,
// from this replica. The recorder drops Events past its rate (per object)
// rather than wait.
func (c *Controller) queryFailed(rule string, err error) {
	if c.cfg.Events == nil {
		return
	}
	c.mu.Lock()
	mr := c.byRule[rule]
	c.mu.Unlock()
	if mr == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "MetricRule", APIVersion: v1alpha1.SchemeGroupVersion.String(),
		Namespace: mr.Namespace, Name: mr.Name, UID: mr.UID}
	c.cfg.Events.Event(ref, corev1.EventTypeWarning, v1alpha1.QueryFailed, message(strings.TrimSpace(err.Error())))
}

// Leading reports whether this replica writes MetricRule status.
func (c *Controller) Leading() bool { return c.leading.Load() }

// Ready is nil once the MetricRules were listed and served.
func (c *Controller) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.served {
		return errors.New("MetricRules not listed and served yet (is the CRD of manifests/metric-rules installed, and may the adapter list them?)")
	}
	return nil
}
