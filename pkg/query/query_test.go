package query

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// limitedStore answers m{o=~"..."} with one sample per object it names,
// and, as VictoriaMetrics does, refuses a query longer than its limit.
type limitedStore struct {
	limit int
	sent  []string
}

func (s *limitedStore) MaxQueryLength() int { return s.limit }

var objectsOf = regexp.MustCompile(`o=~?"([^"]*)"`)

func (s *limitedStore) Query(_ context.Context, expr string) (model.Vector, error) {
	s.sent = append(s.sent, expr)
	if s.limit > 0 && len(expr) > s.limit {
		return nil, fmt.Errorf("too long query; got %d bytes; mustn't exceed -search.maxQueryLen=%d bytes", len(expr), s.limit)
	}
	m := objectsOf.FindStringSubmatch(expr)
	if m == nil {
		return nil, fmt.Errorf("no objects in %q", expr)
	}
	var out model.Vector
	for o := range strings.SplitSeq(m[1], "|") {
		out = append(out, &model.Sample{Metric: model.Metric{"o": model.LabelValue(o)}, Value: 1})
	}
	return out, nil
}

func objectsQuery(objects []string) func(i, j int) Query {
	return func(i, j int) Query {
		return Query{API: "custom", Rule: "rules[0]", What: func() string { return "m" }, Render: func() (string, error) {
			return "sum by (o) (m{" + promql.Join([]promql.Matcher{promql.OneOf("o", objects[i:j])}) + "})", nil
		}}
	}
}

func answered(v model.Vector) []string {
	var out []string
	for _, s := range v {
		out = append(out, string(s.Metric["o"]))
	}
	slices.Sort(out)
	return out
}

func TestRunInParts(t *testing.T) {
	objects := make([]string, 1000)
	for i := range objects {
		objects[i] = fmt.Sprintf("pod-%04d", i)
	}
	whole, _ := objectsQuery(objects)(0, len(objects)).Render()

	for _, tc := range []struct {
		name      string
		limit     int
		wantParts int // exactly; 0: more than one, each within the limit
	}{
		{name: "no limit: one query", limit: 0, wantParts: 1},
		{name: "a limit the query fits: one query", limit: len(whole), wantParts: 1},
		{name: "one byte less: two halves", limit: len(whole) - 1, wantParts: 2},
		{name: "a tenth: parts that each fit", limit: len(whole) / 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &limitedStore{limit: tc.limit}
			res, err := RunInParts(context.Background(), Stores{Default: store}, len(objects), objectsQuery(objects))
			if err != nil {
				t.Fatal(err)
			}
			if got := answered(res.Vector); !slices.Equal(got, objects) {
				t.Fatalf("answered %d objects (%v...), want the %d asked for, each once", len(got), got[:min(3, len(got))], len(objects))
			}
			if tc.wantParts > 0 && len(store.sent) != tc.wantParts {
				t.Fatalf("sent %d queries, want %d", len(store.sent), tc.wantParts)
			}
			if tc.wantParts == 0 && len(store.sent) < 2 {
				t.Fatalf("sent %d queries, want parts", len(store.sent))
			}
			for _, e := range store.sent {
				if tc.limit > 0 && len(e) > tc.limit {
					t.Fatalf("sent a %d-byte query to a store that takes %d", len(e), tc.limit)
				}
			}
		})
	}
}

// The attack: a request whose one object's query is already longer than
// the store takes (a label value of many KiB) is refused before anything
// is sent, as a 500 naming the rule, rather than hammering the store with
// halvings or sending what it refuses.
func TestRunInPartsRefusesWhatCannotFit(t *testing.T) {
	huge := strings.Repeat("x", 4096)
	objects := []string{"a", huge, "b"}
	store := &limitedStore{limit: 1024}
	_, err := RunInParts(context.Background(), Stores{Default: store}, len(objects), objectsQuery(objects))
	if !apierrors.IsInternalError(err) || !strings.Contains(err.Error(), "rules[0]") || !strings.Contains(err.Error(), "maxQueryLength") {
		t.Fatalf("err = %v, want a 500 naming the rule and maxQueryLength", err)
	}
	if len(store.sent) != 0 {
		t.Fatalf("sent %d queries, want none", len(store.sent))
	}
	// A query that is not sent in parts is refused whole too.
	store.sent = nil
	_, err = Run(context.Background(), Stores{Default: store}, objectsQuery(objects)(0, len(objects)))
	if !apierrors.IsInternalError(err) || len(store.sent) != 0 {
		t.Fatalf("err = %v, sent %d: want a 500 and nothing sent", err, len(store.sent))
	}
}
