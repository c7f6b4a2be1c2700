package resolver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	kubefake "k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

func newIndexer(t *testing.T) cache.Indexer {
	t.Helper()
	return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
		labelIndex:           newSelectionCache().indexFunc,
	})
}

func mustParse(t *testing.T, s string) labels.Selector {
	t.Helper()
	sel, err := labels.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

// bruteForce is what the index must agree with: every object of the
// namespace checked against the selector.
func bruteForce(objs []*metav1.PartialObjectMetadata, namespace string, sel labels.Selector) []string {
	var out []string
	for _, o := range objs {
		if o.Namespace == namespace && sel.Matches(labels.Set(o.Labels)) {
			out = append(out, o.Name)
		}
	}
	slices.Sort(out)
	return out
}

func TestMatchingNamesUnderChurn(t *testing.T) {
	idx := newIndexer(t)
	add := func(ns, name string, lbls map[string]string) {
		t.Helper()
		if err := idx.Add(pod(ns, name, lbls)); err != nil {
			t.Fatal(err)
		}
	}
	add("shop", "web-1", map[string]string{"app": "web", "tier": "front"})
	add("shop", "web-2", map[string]string{"app": "web", "tier": "front"})
	add("shop", "api-1", map[string]string{"app": "api"})
	add("other", "web-9", map[string]string{"app": "web"})

	check := func(step, sel string, want ...string) {
		t.Helper()
		got, err := matchingNames(idx, "shop", mustParse(t, sel))
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(want, got, cmpopts.EquateEmpty()); d != "" {
			t.Errorf("%s: %q (-want +got):\n%s", step, sel, d)
		}
	}
	check("start", "app=web", "web-1", "web-2")
	check("start", "app in (web,api)", "api-1", "web-1", "web-2")
	check("start", "app=web,tier=front", "web-1", "web-2")
	check("start", "tier", "web-1", "web-2")
	check("start", "!tier", "api-1")
	check("start", "app!=web", "api-1")
	check("start", "app notin (api)", "web-1", "web-2")
	check("start", "", "api-1", "web-1", "web-2")
	check("start", "app=nope")

	// A pod added is in the next answer.
	add("shop", "web-3", map[string]string{"app": "web"})
	check("added", "app=web", "web-1", "web-2", "web-3")
	// Relabelled: out of its old selection, into its new one.
	if err := idx.Update(pod("shop", "web-1", map[string]string{"app": "api", "tier": "front"})); err != nil {
		t.Fatal(err)
	}
	check("relabelled", "app=web", "web-2", "web-3")
	check("relabelled", "app=api", "api-1", "web-1")
	check("relabelled", "app=api,tier=front", "web-1")
	// Deleted: out.
	if err := idx.Delete(pod("shop", "web-2", nil)); err != nil {
		t.Fatal(err)
	}
	check("deleted", "app=web", "web-3")
	check("deleted", "tier", "web-1")
}

func TestCandidatesFollowTheSmallestRequirement(t *testing.T) {
	idx := newIndexer(t)
	for i := range 1000 {
		lbls := map[string]string{"app": fmt.Sprintf("app-%d", i%50), "bench": "all"}
		if i < 3 {
			lbls["canary"] = "yes"
		}
		if err := idx.Add(pod("big", fmt.Sprintf("p-%04d", i), lbls)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		sel  string
		want int // candidates examined
	}{
		{"app=app-7", 20},
		{"bench=all,app=app-7", 20},
		{"app in (app-1,app-2),bench=all", 40},
		{"bench=all,canary", 3},
		{"bench=all,canary=no", 0},
		{"app!=app-1", 1000}, // only a negation: the namespace
		{"", 1000},
	} {
		objs, err := candidates(idx, "big", mustParse(t, tc.sel))
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != tc.want {
			t.Errorf("%q: %d candidates, want %d", tc.sel, len(objs), tc.want)
		}
	}
}

// TestMatchingNamesAgreesWithBruteForce throws random label sets and
// selectors at the index, with churn in between, and compares every answer
// with a scan of the namespace.
func TestMatchingNamesAgreesWithBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := []string{"app", "tier", "team"}
	values := []string{"a", "b", "c"}
	randLabels := func() map[string]string {
		l := map[string]string{}
		for _, k := range keys {
			if rng.IntN(3) > 0 {
				l[k] = values[rng.IntN(len(values))]
			}
		}
		return l
	}
	randSelector := func() string {
		var parts []string
		for _, k := range keys {
			v := values[rng.IntN(len(values))]
			switch rng.IntN(7) {
			case 0:
				parts = append(parts, k+"="+v)
			case 1:
				parts = append(parts, k+"!="+v)
			case 2:
				parts = append(parts, k+" in ("+v+","+values[rng.IntN(len(values))]+")")
			case 3:
				parts = append(parts, k+" notin ("+v+")")
			case 4:
				parts = append(parts, k)
			case 5:
				parts = append(parts, "!"+k)
			}
		}
		return strings.Join(parts, ",")
	}
	idx := newIndexer(t)
	var objs []*metav1.PartialObjectMetadata
	for i := range 300 {
		o := pod([]string{"x", "y"}[i%2], fmt.Sprintf("p-%03d", i), randLabels())
		objs = append(objs, o)
		if err := idx.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 200 {
		// Churn: relabel one object, delete and re-add another.
		i := rng.IntN(len(objs))
		objs[i] = pod(objs[i].Namespace, objs[i].Name, randLabels())
		if err := idx.Update(objs[i]); err != nil {
			t.Fatal(err)
		}
		j := rng.IntN(len(objs))
		if err := idx.Delete(objs[j]); err != nil {
			t.Fatal(err)
		}
		objs = slices.Delete(objs, j, j+1)
		if round%2 == 0 {
			o := pod("x", fmt.Sprintf("new-%03d", round), randLabels())
			objs = append(objs, o)
			if err := idx.Add(o); err != nil {
				t.Fatal(err)
			}
		}
		sel := mustParse(t, randSelector())
		for _, ns := range []string{"x", "y"} {
			got, err := matchingNames(idx, ns, sel)
			if err != nil {
				t.Fatal(err)
			}
			if want := bruteForce(objs, ns, sel); len(got)+len(want) > 0 && !slices.Equal(got, want) {
				t.Fatalf("round %d, %s, %q: index %v, scan %v", round, ns, sel, got, want)
			}
		}
	}
}

// TestPodsMatchingFollowsChurnThroughTheCache drives a real metadata
// informer: answers are cached per selector, and a pod added, relabelled
// or deleted shows in the next answers.
// startPodResolver starts a Resolver whose pods are pods, served by a
// fake metadata client, and waits for its pod cache.
func startPodResolver(t *testing.T, pods ...runtime.Object) (context.Context, *Resolver, *metadatafake.FakeMetadataClient) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	metaClient := metadatafake.NewSimpleMetadataClient(scheme, pods...)
	r := New(kubefake.NewClientset(), metaClient, rules.BuiltinMapper())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	r.Start(ctx)
	if !r.WaitForPods(ctx) {
		t.Fatal("pod cache did not sync")
	}
	return ctx, r, metaClient
}

func TestPodsMatchingFollowsChurnThroughTheCache(t *testing.T) {
	ctx, r, metaClient := startPodResolver(t,
		pod("shop", "web-1", map[string]string{"app": "web"}),
		pod("shop", "web-2", map[string]string{"app": "web"}),
	)
	web := labels.SelectorFromSet(labels.Set{"app": "web"})
	eventually := func(step string, want ...string) {
		t.Helper()
		var got []string
		err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
			var err error
			got, err = r.PodsMatching(ctx, "shop", web)
			return err == nil && slices.Equal(got, want), err
		})
		if err != nil {
			t.Fatalf("%s: app=web matches %v, want %v", step, got, want)
		}
	}
	eventually("start", "web-1", "web-2")
	// Asked again, the cached answer is the same slice.
	a, _ := r.PodsMatching(ctx, "shop", web)
	b, _ := r.PodsMatching(ctx, "shop", web)
	if len(a) == 0 || &a[0] != &b[0] {
		t.Error("the second identical selection was computed again, not served from the cache")
	}

	tracker := metaClient.Tracker()
	if err := tracker.Add(pod("shop", "web-3", map[string]string{"app": "web"})); err != nil {
		t.Fatal(err)
	}
	eventually("added", "web-1", "web-2", "web-3")
	if err := tracker.Update(PodsGVR, pod("shop", "web-1", map[string]string{"app": "api"}), "shop"); err != nil {
		t.Fatal(err)
	}
	eventually("relabelled", "web-2", "web-3")
	if err := tracker.Delete(PodsGVR, "shop", "web-2"); err != nil {
		t.Fatal(err)
	}
	eventually("deleted", "web-3")
	// Another namespace's churn leaves this namespace's answer cached.
	a, _ = r.PodsMatching(ctx, "shop", web)
	if err := tracker.Add(pod("other", "web-9", map[string]string{"app": "web"})); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := r.PodsMatching(ctx, "other", web)
		return err == nil && slices.Equal(got, []string{"web-9"}), err
	}); err != nil {
		t.Fatal(err)
	}
	if b, _ := r.PodsMatching(ctx, "shop", web); &a[0] != &b[0] {
		t.Error("a pod added in another namespace invalidated this namespace's answers")
	}
}

// cachedIndexer is an informer's store with the label index and a
// selection cache, as prepareInformer sets them up, without the informer:
// what the store holds is what the next answer must say, with no event
// handler run in between.
func cachedIndexer(t *testing.T) (cache.Indexer, *selectionCache, func(ns, sel string) []string) {
	t.Helper()
	c := newSelectionCache()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
		labelIndex:           c.indexFunc,
	})
	names := func(ns, sel string) []string {
		t.Helper()
		s := mustParse(t, sel)
		got, err := c.names(ns, s, func() ([]string, error) { return matchingNames(idx, ns, s) })
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	return idx, c, names
}

// Once the store holds a change, the next answer has it: the generation
// moves under the store's lock, not when the informer's handlers get to it.
func TestCachedAnswerFollowsTheStore(t *testing.T) {
	idx, _, names := cachedIndexer(t)
	want := func(step string, got []string, want ...string) {
		t.Helper()
		if d := cmp.Diff(want, got, cmpopts.EquateEmpty()); d != "" {
			t.Errorf("%s (-want +got):\n%s", step, d)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(idx.Add(pod("shop", "web-1", map[string]string{"app": "web"})))
	want("start", names("shop", "app=web"), "web-1")
	want("start, negation", names("shop", "app!=api"), "web-1")

	must(idx.Add(pod("shop", "web-2", map[string]string{"app": "web"})))
	want("added", names("shop", "app=web"), "web-1", "web-2")
	want("added, negation", names("shop", "app!=api"), "web-1", "web-2")

	must(idx.Update(pod("shop", "web-1", map[string]string{"app": "api"})))
	want("relabelled", names("shop", "app=web"), "web-2")
	want("relabelled, negation", names("shop", "app!=api"), "web-2")

	must(idx.Delete(pod("shop", "web-2", nil)))
	want("deleted", names("shop", "app=web"))
	want("all namespaces", names("", "app=api"), "web-1")
	want("all namespaces, none", names("", "app=web"))

	// A relist replaces everything at once.
	must(idx.Replace([]any{
		pod("shop", "web-7", map[string]string{"app": "web"}),
		pod("other", "web-8", map[string]string{"app": "web"}),
	}, "2"))
	want("replaced", names("shop", "app=web"), "web-7")
	want("replaced, all namespaces", names("", "app=web"), "web-7", "web-8")
}

func TestCacheIsBoundedByNames(t *testing.T) {
	idx, c, names := cachedIndexer(t)
	for i := range 300 {
		if err := idx.Add(pod("shop", fmt.Sprintf("p-%03d", i), map[string]string{"app": "web", "n": fmt.Sprint(i)})); err != nil {
			t.Fatal(err)
		}
	}
	// Selectors that all match the whole namespace, each a new entry.
	for i := range maxCachedNames/300 + 10 {
		if got := names("shop", fmt.Sprintf("app=web,x%d!=y", i)); len(got) != 300 {
			t.Fatalf("%d names, want 300", len(got))
		}
		c.mu.Lock()
		size, n := c.size, 300*c.entries.Len()
		c.mu.Unlock()
		if size != n || size > maxCachedNames {
			t.Fatalf("after %d selectors: size %d, entries hold %d names, bound %d", i+1, size, n, maxCachedNames)
		}
	}
}

// Past its bound the cache drops its least recently used answers, not
// everything: an answer every HPA keeps asking for stays.
func TestCacheDropsTheLeastRecentlyUsed(t *testing.T) {
	c := newSelectionCache()
	computed := map[string]int{}
	ask := func(sel string) {
		t.Helper()
		s := mustParse(t, sel)
		if _, err := c.names("shop", s, func() ([]string, error) { computed[sel]++; return []string{"p"}, nil }); err != nil {
			t.Fatal(err)
		}
	}
	ask("app=hot")
	for i := range maxSelections + 100 {
		ask(fmt.Sprintf("app=cold-%d", i))
		ask("app=hot")
	}
	if computed["app=hot"] != 1 {
		t.Errorf("the answer asked for all along was computed %d times, want once", computed["app=hot"])
	}
	ask("app=cold-0")
	if computed["app=cold-0"] != 2 {
		t.Errorf("the least recently used answer was computed %d times, want twice (dropped, then asked again)", computed["app=cold-0"])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.entries.Len(); n != maxSelections || c.size != n || c.cachedIn["shop"] != n {
		t.Errorf("%d entries, size %d, %d counted in shop; want %d each", n, c.size, c.cachedIn["shop"], maxSelections)
	}
}

// labels.Nothing() prints as labels.Everything() does: it must not share
// Everything's entry.
func TestNothingIsNotEverything(t *testing.T) {
	idx, c, _ := cachedIndexer(t)
	if err := idx.Add(pod("shop", "web-1", map[string]string{"app": "web"})); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sel  labels.Selector
		want int
	}{{labels.Nothing(), 0}, {labels.Everything(), 1}, {labels.Nothing(), 0}} {
		got, err := c.names("shop", tc.sel, func() ([]string, error) { return matchingNames(idx, "shop", tc.sel) })
		if err != nil || len(got) != tc.want {
			t.Fatalf("%#v: %v %v, want %d names", tc.sel, got, err, tc.want)
		}
	}
}

// Through a running informer: as soon as the informer's store holds a new
// pod, the next answer has it, before or after the event handlers run.
func TestAnswerHasWhatTheInformerHolds(t *testing.T) {
	ctx, r, metaClient := startPodResolver(t)
	store := r.pods.inf.GetStore()
	web := labels.SelectorFromSet(labels.Set{"app": "web"})
	for i := range 200 {
		name := fmt.Sprintf("web-%03d", i)
		// Asked before every add, so that an answer is cached.
		if _, err := r.PodsMatching(ctx, "shop", web); err != nil {
			t.Fatal(err)
		}
		if err := metaClient.Tracker().Add(pod("shop", name, map[string]string{"app": "web"})); err != nil {
			t.Fatal(err)
		}
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Microsecond, 10*time.Second, true, func(context.Context) (bool, error) {
			_, ok, err := store.GetByKey("shop/" + name)
			return ok, err
		}); err != nil {
			t.Fatal(err)
		}
		got, err := r.PodsMatching(ctx, "shop", web)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != i+1 || !slices.Contains(got, name) {
			t.Fatalf("after %s reached the informer's store: %d pods match, %s among them: %v; want %d", name, len(got), name, slices.Contains(got, name), i+1)
		}
	}
}

// The generations of namespaces are bounded: those without a cached answer
// are forgotten, and what is forgotten still never serves a stale answer.
func TestGenerationsAreBounded(t *testing.T) {
	c := newSelectionCache()
	sel := labels.SelectorFromSet(labels.Set{"app": "web"})
	answer := func(ns string, names ...string) []string {
		got, err := c.names(ns, sel, func() ([]string, error) { return slices.Clone(names), nil })
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	c.bump("shop")
	kept := answer("shop", "web-1")
	c.bump("quiet") // a namespace with a generation and no cached answer
	inFlight := c.gen("quiet")
	for i := range 3 * maxGenerations {
		c.bump(fmt.Sprintf("ns-%d", i))
		if n := len(c.gens); n > maxGenerations {
			t.Fatalf("after %d namespaces, %d generations are kept, want at most %d", i+1, n, maxGenerations)
		}
	}
	if _, ok := c.gens["quiet"]; ok {
		t.Error("a namespace without a cached answer kept its generation")
	}
	if got := answer("shop", "changed"); &got[0] != &kept[0] {
		t.Error("a namespace's cached answer was dropped with the generations of others")
	}
	// An answer for "quiet" computed before its generation was forgotten
	// must not stand.
	if c.gen("quiet") == inFlight {
		t.Error("a forgotten namespace reads the generation an answer in flight read before")
	}
	first := answer("quiet", "a")
	c.bump("quiet")
	if got := answer("quiet", "b"); got[0] != "b" {
		t.Errorf("after a change, the answer is %v, want it computed again", got)
	}
	_ = first
}

// After a relist the store is replaced whole, and a namespace whose every
// object went away meanwhile is seen only by the delete handler: it bumps
// the namespace, so the cached answer is not served again.
func TestADeletionSeenAfterARelistInvalidates(t *testing.T) {
	c := newSelectionCache()
	sel := labels.SelectorFromSet(labels.Set{"app": "web"})
	answer := func(names ...string) []string {
		got, _ := c.names("shop", sel, func() ([]string, error) { return names, nil })
		return got
	}
	answer("web-1")
	if got := answer("changed"); got[0] != "web-1" {
		t.Fatalf("not cached: %v", got)
	}
	c.deleted(cache.DeletedFinalStateUnknown{Key: "shop/web-1", Obj: pod("shop", "web-1", map[string]string{"app": "web"})})
	if got := answer(); len(got) != 0 {
		t.Errorf("after web-1's deletion was handed out, the answer is %v, want it computed again (empty)", got)
	}
}
