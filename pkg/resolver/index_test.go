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

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakemapper"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	kubefake "k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	"k8s.io/client-go/tools/cache"
)

func newIndexer(t *testing.T) cache.Indexer {
	t.Helper()
	return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
		labelIndex:           labelIndexFunc,
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
func TestPodsMatchingFollowsChurnThroughTheCache(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	metaClient := metadatafake.NewSimpleMetadataClient(scheme,
		pod("shop", "web-1", map[string]string{"app": "web"}),
		pod("shop", "web-2", map[string]string{"app": "web"}),
	)
	r := New(kubefake.NewClientset(), metaClient, fakemapper.New())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r.Start(ctx)
	if !r.WaitForPods(ctx) {
		t.Fatal("pod cache did not sync")
	}
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
