package query

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// countingStore answers each object's value, its name's length plus the
// number of queries sent so far (so that a value tells which query gave
// it), and counts the queries; down makes it fail.
type countingStore struct {
	mu   sync.Mutex
	sent []string
	down bool
}

func (s *countingStore) Query(_ context.Context, expr string) (model.Vector, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return nil, errors.New("connection refused")
	}
	s.sent = append(s.sent, expr)
	m := objectsOf.FindStringSubmatch(expr)
	if m == nil {
		return nil, errors.New("no objects")
	}
	var out model.Vector
	for o := range strings.SplitSeq(m[1], "|") {
		out = append(out, &model.Sample{Metric: model.Metric{"o": model.LabelValue(o)}, Value: model.SampleValue(len(o) + len(s.sent))})
	}
	return out, nil
}

func (s *countingStore) queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sent)
}

// shape is a shareable query about objects o, of rule rules[0] in one
// namespace; render is its query for the objects.
func shape(render func(objects []string) string) Shape {
	return Shape{Key: "rules[0]/shop", Rule: "rules[0]", Label: "o", Query: func(values []string) Many {
		return Many{N: len(values), Query: func(ids []int) Query {
			return Query{API: "custom", Rule: "rules[0]", What: func() string { return "m" },
				Render: func() (string, error) { return render(Pick(values, ids)), nil }}
		}}
	}}
}

func perObject(objects []string) string {
	return "sum by (o) (m{" + promql.Join([]promql.Matcher{promql.OneOf("o", objects)}) + "})"
}

// Requests for different objects of one rule and namespace are answered
// from one query of them all: a request for objects already covered sends
// nothing; new objects join the query, which runs once for the requests
// missing together; each gets the values of its own objects only, equal
// to what its own query gives.
func TestSharingAnswersFromOneQuery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &countingStore{}
		s := NewSharing(Stores{Default: store}, 30*time.Second)
		ctx := context.Background()
		sh := shape(perObject)

		get := func(objects ...string) Shared {
			t.Helper()
			out, ok, err := s.Answer(ctx, sh, objects)
			if err != nil || !ok {
				t.Fatalf("%v: %v %v", objects, ok, err)
			}
			if got := answered(out.Vector); !slices.Equal(got, objects) {
				t.Fatalf("asked for %v, answered %v", objects, got)
			}
			return out
		}
		get("a", "b")
		get("c")
		if n := store.queries(); n != 2 || !strings.Contains(store.sent[1], `o=~"a|b|c"`) {
			t.Fatalf("sent %q: want a|b, then a|b|c", store.sent)
		}
		time.Sleep(10 * time.Second)
		out := get("a", "b")
		if store.queries() != 2 || out.Age != 10*time.Second {
			t.Fatalf("a covered request sent %d queries, age %s: want none, 10s", store.queries()-2, out.Age)
		}
		// The shared values are the ones the union query gave, which for
		// this per-object query are each object's own.
		for _, smp := range out.Vector {
			if int(smp.Value) != len(smp.Metric["o"])+2 {
				t.Errorf("%s = %v, want the second query's", smp.Metric, smp.Value)
			}
		}

		// Many requests missing at once share one query.
		var wg sync.WaitGroup
		for _, o := range []string{"d", "e", "f", "d"} {
			wg.Go(func() {
				if _, _, err := s.Answer(ctx, sh, []string{o}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if n := store.queries(); n > 5 {
			t.Errorf("4 requests for 3 new objects sent %d queries", n-2)
		}
	})
}

// In the background the shared query is refreshed when its answer is a
// third of the bound old, so requests never wait for it; an object nobody asks for
// any more leaves it; when the store fails, the answer ages out at the
// bound and requests get the store's error, never an older value.
func TestSharingRefreshesAndNeverServesOlderThanTheBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &countingStore{}
		const maxAge = 20 * time.Second
		s := NewSharing(Stores{Default: store}, maxAge)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go s.Run(ctx, 2)
		sh := shape(perObject)
		if _, _, err := s.Answer(ctx, sh, []string{"a", "b"}); err != nil {
			t.Fatal(err)
		}
		for range 6 {
			time.Sleep(15 * time.Second)
			synctest.Wait()
			out, ok, err := s.Answer(ctx, sh, []string{"a"})
			if err != nil || !ok || out.Age > maxAge/3+maxAge/12 {
				t.Fatalf("answer %v %v, age %s: want one refreshed in the background", ok, err, out.Age)
			}
		}
		n := store.queries()
		if n < 9 || n > 14 {
			t.Errorf("%d queries in 90 s at a bound of 20 s: want one per 7 to 8 s", n)
		}
		if last := store.sent[len(store.sent)-1]; objectsOf.FindStringSubmatch(last)[1] != "a" {
			t.Errorf("b, not asked for in 90 s, is still queried: %s", last)
		}

		store.mu.Lock()
		store.down = true
		store.mu.Unlock()
		for i := range 4 {
			time.Sleep(10 * time.Second)
			synctest.Wait()
			out, _, err := s.Answer(ctx, sh, []string{"a"})
			if err == nil && out.Age > maxAge {
				t.Fatalf("served an answer %s old, past the bound of %s", out.Age, maxAge)
			}
			if i >= 2 && !apierrors.IsServiceUnavailable(err) {
				t.Fatalf("%ds after the store failed: %v, want its error (503)", 10*(i+1), err)
			}
		}
	})
}

// The attack and the limit: a rule whose value for an object depends on
// other objects' series (a sum over all, a ratio to a total, topk) is
// never shared, and says why.
func TestSharingRefusesQueriesThatMixObjects(t *testing.T) {
	store := &countingStore{}
	s := NewSharing(Stores{Default: store}, 30*time.Second)
	for _, render := range []func([]string) string{
		func(o []string) string { return "sum(m{" + promql.Join([]promql.Matcher{promql.OneOf("o", o)}) + "})" },
		func(o []string) string {
			sel := "m{" + promql.Join([]promql.Matcher{promql.OneOf("o", o)}) + "}"
			return "sum by (o) (" + sel + ") / scalar(sum(" + sel + "))"
		},
		func(o []string) string {
			return "topk(1, m{" + promql.Join([]promql.Matcher{promql.OneOf("o", o)}) + "})"
		},
	} {
		sh := shape(render)
		sh.Key = render([]string{"x"})
		if _, ok, err := s.Answer(context.Background(), sh, []string{"a"}); ok || err != nil {
			t.Errorf("%s: shared (%v, %v)", sh.Key, ok, err)
		}
		if why := s.why[sh.Key]; why == "" {
			t.Errorf("%s: no reason recorded", sh.Key)
		}
	}
	if store.queries() != 0 {
		t.Errorf("sent %q for queries that are not shared", store.sent)
	}
}

var _ promclient.Querier = (*countingStore)(nil)
