package resolver

import (
	"fmt"
	"slices"
	"sync"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/lru"
)

// labelIndex is the name of the informer index from a label to the
// objects that carry it, in the shape of Prometheus' postings: for every
// label k=v of an object in namespace ns, the object is filed under
// "ns\x00k\x00v" and under "ns\x00k" (for Exists). client-go keeps it in
// step with the cache on every add, update and delete, under the cache's
// own lock, so a lookup never sees an object the cache no longer holds.
const labelIndex = "labels"

// postingKeys are the label index's values for an object.
func postingKeys(m metav1.Object) []string {
	ls := m.GetLabels()
	keys := make([]string, 0, 2*len(ls))
	for k, v := range ls {
		keys = append(keys, postingKey(m.GetNamespace(), k, v), postingKey(m.GetNamespace(), k))
	}
	return keys
}

// postingKey is the index value of a label (with its value, or without for
// Exists) in a namespace.
func postingKey(namespace string, kv ...string) string {
	key := namespace
	for _, s := range kv {
		key += "\x00" + s
	}
	return key
}

// addLabelIndex adds the label index to an informer that has not started,
// with c's generations kept in step with it.
func addLabelIndex(inf cache.SharedIndexInformer, c *selectionCache) error {
	if err := inf.AddIndexers(cache.Indexers{labelIndex: c.indexFunc}); err != nil {
		return fmt.Errorf("adding the label index: %w", err)
	}
	return nil
}

// candidates returns the objects of namespace that may match sel, from
// the smallest posting list among the selector's equality, set and exists
// requirements: every match is in each of them. A selector with none of
// those (everything, or only negations) gets the namespace, and namespace
// "" (a cluster-scoped resource, or all namespaces) everything. The caller
// still checks each candidate against sel, so the cost of a request follows
// the size of its smallest requirement, not of the namespace.
func candidates(indexer cache.Indexer, namespace string, sel labels.Selector) ([]any, error) {
	if namespace == "" {
		return indexer.List(), nil
	}
	reqs, _ := sel.Requirements()
	var best []any
	found := false
	for _, r := range reqs {
		var keys []string
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			for _, v := range r.ValuesUnsorted() {
				keys = append(keys, postingKey(namespace, r.Key(), v))
			}
		case selection.Exists:
			keys = []string{postingKey(namespace, r.Key())}
		default:
			continue
		}
		var objs []any
		for _, k := range keys {
			o, err := indexer.ByIndex(labelIndex, k)
			if err != nil {
				return nil, err
			}
			objs = append(objs, o...)
		}
		if !found || len(objs) < len(best) {
			best, found = objs, true
		}
		if len(best) == 0 {
			return nil, nil
		}
	}
	if !found {
		return indexer.ByIndex(cache.NamespaceIndex, namespace)
	}
	return best, nil
}

// matchingNames returns the sorted, distinct names of the objects in
// namespace that sel matches.
func matchingNames(indexer cache.Indexer, namespace string, sel labels.Selector) ([]string, error) {
	objs, err := candidates(indexer, namespace, sel)
	if err != nil {
		return nil, fmt.Errorf("reading cache: %w", err)
	}
	names := make([]string, 0, len(objs))
	for _, o := range objs {
		m, err := apimeta.Accessor(o)
		if err != nil {
			continue
		}
		if (namespace == "" || m.GetNamespace() == namespace) && sel.Matches(labels.Set(m.GetLabels())) {
			names = append(names, m.GetName())
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// selectionCache remembers, per namespace, the sorted names each selector
// matched, until an object of that namespace changes: every HPA asks the
// same question every 15 s, and hundreds of them share a namespace.
//
// The namespace's generation is bumped by the label index's own function,
// which client-go calls under the informer cache's write lock for every
// object it adds, updates (old and new), deletes or replaces. So once the
// cache holds a change, the generation has moved: an answer computed before
// it is never served after it. (Bumping from the informer's event handlers
// would not do: they run later, on their own goroutines, and a request in
// between would get the old answer from a cache that already has the new
// object.) Any change of an object bumps, not only a change of its labels:
// the index function cannot tell an update's old object from a deletion.
type selectionCache struct {
	mu sync.Mutex
	// seq counts every bump; a namespace's generation is the seq of its
	// last bump, or base for a namespace not in gens.
	seq, base uint64
	gens      map[string]uint64
	// entries maps a selectionKey to its selectionEntry; the least
	// recently used goes first, past either bound.
	entries *lru.Cache
	// size is the number of names the entries hold, cachedIn the number
	// of entries per namespace.
	size     int
	cachedIn map[string]int
}

type selectionKey struct{ namespace, selector string }

type selectionEntry struct {
	gen   uint64
	names []string
}

// Bounds of the cache; past either, the least recently used answers go.
// An answer larger than maxCachedNames is computed every time. Past maxGenerations namespaces
// with a generation, those without a cached answer are forgotten
// (forget).
const (
	maxSelections  = 4096
	maxCachedNames = 1 << 18
	maxGenerations = 2 * maxSelections
)

func newSelectionCache() *selectionCache {
	c := &selectionCache{gens: map[string]uint64{}, cachedIn: map[string]int{}}
	c.entries = lru.NewWithEvictionFunc(maxSelections, c.evicted)
	return c
}

// evicted keeps size and cachedIn as the entries go; the cache calls it
// with c.mu held (every call into entries is).
func (c *selectionCache) evicted(key lru.Key, value any) {
	k, e := key.(selectionKey), value.(selectionEntry)
	c.size -= len(e.names)
	if c.cachedIn[k.namespace]--; c.cachedIn[k.namespace] <= 0 {
		delete(c.cachedIn, k.namespace)
	}
}

// indexFunc is the label index's function: it bumps the generation of the
// object's namespace (and of the answers over all namespaces), then
// returns the object's posting keys.
func (c *selectionCache) indexFunc(obj any) ([]string, error) {
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	c.bump(m.GetNamespace())
	return postingKeys(m), nil
}

// deleted is the informer's delete handler: it bumps the generation of the
// object's namespace. The index function bumps it too on an ordinary
// delete; after a relist (a store replaced whole) only this one does for a
// namespace whose objects all went away.
func (c *selectionCache) deleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if m, err := apimeta.Accessor(obj); err == nil {
		c.bump(m.GetNamespace())
	}
}

func (c *selectionCache) bump(namespace string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.gens[namespace] = c.seq
	if namespace != "" {
		c.gens[""] = c.seq // the answers over all namespaces
	}
	if len(c.gens) > maxGenerations {
		c.forget()
	}
}

// forget drops the generations of the namespaces without a cached answer,
// so that a cluster's every namespace does not stay in memory. Those
// namespaces read base from now on: the newest seq, later than any
// generation an answer being computed for them read, so such an answer is
// stored as stale. Call it with c.mu held.
func (c *selectionCache) forget() {
	for ns := range c.gens {
		if c.cachedIn[ns] == 0 {
			delete(c.gens, ns)
		}
	}
	c.base = c.seq
}

// gen is a namespace's generation. Call it with c.mu held.
func (c *selectionCache) gen(namespace string) uint64 {
	if g, ok := c.gens[namespace]; ok {
		return g
	}
	return c.base
}

// names returns the cached answer, or computes, stores and returns it.
// The slice is shared: callers must not modify it.
func (c *selectionCache) names(namespace string, sel labels.Selector, compute func() ([]string, error)) ([]string, error) {
	if _, selectable := sel.Requirements(); !selectable {
		// labels.Nothing(), whose String() is Everything's.
		return compute()
	}
	key := selectionKey{namespace, sel.String()}
	c.mu.Lock()
	gen := c.gen(namespace)
	v, ok := c.entries.Get(key)
	c.mu.Unlock()
	if e, _ := v.(selectionEntry); ok && e.gen == gen {
		return e.names, nil
	}
	names, err := compute()
	if err != nil || len(names) > maxCachedNames {
		return names, err
	}
	c.mu.Lock()
	c.entries.Remove(key)
	for c.size+len(names) > maxCachedNames && c.entries.Len() > 0 {
		c.entries.RemoveOldest()
	}
	c.entries.Add(key, selectionEntry{gen: gen, names: names}) // past maxSelections, the oldest goes
	c.size += len(names)
	c.cachedIn[namespace]++
	c.mu.Unlock()
	return names, nil
}
