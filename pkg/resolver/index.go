package resolver

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/tools/cache"
)

// labelIndex is the name of the informer index from a label to the
// objects that carry it, in the shape of Prometheus' postings: for every
// label k=v of an object in namespace ns, the object is filed under
// "ns\x00k\x00v" and under "ns\x00k" (for Exists). client-go keeps it in
// step with the cache on every add, update and delete, under the cache's
// own lock, so a lookup never sees an object the cache no longer holds.
const labelIndex = "labels"

func labelIndexFunc(obj any) ([]string, error) {
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	ls := m.GetLabels()
	keys := make([]string, 0, 2*len(ls))
	for k, v := range ls {
		keys = append(keys, postingKey(m.GetNamespace(), k, v), postingKey(m.GetNamespace(), k))
	}
	return keys, nil
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

// addLabelIndex adds the label index to an informer that has not started.
func addLabelIndex(inf cache.SharedIndexInformer) error {
	if err := inf.AddIndexers(cache.Indexers{labelIndex: labelIndexFunc}); err != nil {
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
// matched, until an object of that namespace is added, deleted or
// relabelled: every HPA asks the same question every 15 s, and hundreds of
// them share a namespace. The informer's event handlers bump the
// namespace's generation; an answer computed at an older generation is
// not served.
type selectionCache struct {
	mu      sync.Mutex
	gens    map[string]uint64
	entries map[selectionKey]selectionEntry
}

type selectionKey struct{ namespace, selector string }

type selectionEntry struct {
	gen   uint64
	names []string
}

// maxSelections bounds the cache; past it, it starts over.
const maxSelections = 4096

func newSelectionCache() *selectionCache {
	return &selectionCache{gens: map[string]uint64{}, entries: map[selectionKey]selectionEntry{}}
}

// watch keeps the cache's generations in step with inf.
func (c *selectionCache) watch(inf cache.SharedIndexInformer) error {
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.invalidate(obj) },
		DeleteFunc: func(obj any) { c.invalidate(obj) },
		UpdateFunc: func(old, obj any) {
			o, err1 := apimeta.Accessor(old)
			n, err2 := apimeta.Accessor(obj)
			if err1 != nil || err2 != nil || !maps.Equal(o.GetLabels(), n.GetLabels()) {
				c.invalidate(obj)
			}
		},
	})
	return err
}

func (c *selectionCache) invalidate(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	ns := ""
	if m, err := apimeta.Accessor(obj); err == nil {
		ns = m.GetNamespace()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gens[ns]++
	if ns != "" {
		c.gens[""]++ // the answers over all namespaces
	}
}

// names returns the cached answer, or computes, stores and returns it.
// The slice is shared: callers must not modify it.
func (c *selectionCache) names(namespace string, sel labels.Selector, compute func() ([]string, error)) ([]string, error) {
	key := selectionKey{namespace, sel.String()}
	c.mu.Lock()
	gen := c.gens[namespace]
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && e.gen == gen {
		return e.names, nil
	}
	names, err := compute()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.entries) >= maxSelections {
		clear(c.entries)
	}
	c.entries[key] = selectionEntry{gen: gen, names: names}
	c.mu.Unlock()
	return names, nil
}
