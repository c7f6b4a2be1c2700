package promclient

import (
	"context"
	"fmt"
	"strings"

	"github.com/prometheus/common/model"
)

// Annotations are what a store says about an answer beside its values:
// Prometheus' warnings and infos (Prometheus 3 sends them apart; Prometheus
// 2 sends infos among the warnings, as "PromQL info: ..."), the warnings of
// Thanos' and Cortex's or Mimir's partial answers (a store, a querier or an
// ingester that did not answer), and VictoriaMetrics' isPartial flag. They
// come from another party's server: at most MaxAnnotations of each kind are
// kept, each cut to MaxAnnotationLength bytes.
type Annotations struct {
	// Warnings say the values may be wrong or incomplete.
	Warnings []string
	// Infos say something about the query that does not change its
	// values (e.g. "metric might not be a counter").
	Infos []string
	// Partial is the store's own flag that the answer lacks data.
	Partial bool
	// Dropped counts the warnings and infos past MaxAnnotations.
	Dropped int
}

const (
	// MaxAnnotations is how many warnings, and how many infos, of one
	// answer are kept.
	MaxAnnotations = 8
	// MaxAnnotationLength is the longest warning or info kept, in bytes.
	MaxAnnotationLength = 512
)

// infoPrefix starts Prometheus' info-level annotations (Prometheus 2
// sends them among the warnings).
const infoPrefix = "PromQL info:"

// add keeps a warning or an info (by its prefix when the store sent it
// among the warnings), within the bounds.
func (a *Annotations) add(s string, info bool) {
	if info || strings.HasPrefix(s, infoPrefix) {
		a.Infos = a.keep(a.Infos, s)
	} else {
		a.Warnings = a.keep(a.Warnings, s)
	}
}

func (a *Annotations) keep(list []string, s string) []string {
	if len(list) >= MaxAnnotations {
		a.Dropped++
		return list
	}
	if len(s) > MaxAnnotationLength {
		s = strings.ToValidUTF8(s[:MaxAnnotationLength], "") + "..."
	}
	return append(list, s)
}

// Doubtful reports whether the answer's values may be wrong or incomplete:
// it has warnings, or it is flagged partial.
func (a Annotations) Doubtful() bool { return len(a.Warnings) > 0 || a.Partial }

// Empty reports whether the store said nothing beside the values.
func (a Annotations) Empty() bool { return !a.Doubtful() && len(a.Infos) == 0 }

// String says the warnings, the partial flag and the infos, in a line.
func (a Annotations) String() string {
	var parts []string
	if a.Partial {
		parts = append(parts, "the store flagged the answer partial")
	}
	for _, w := range a.Warnings {
		parts = append(parts, "warning: "+w)
	}
	for _, i := range a.Infos {
		parts = append(parts, "info: "+i)
	}
	if a.Dropped > 0 {
		parts = append(parts, fmt.Sprintf("and %d more", a.Dropped))
	}
	return strings.Join(parts, "; ")
}

// OnWarning is what a client does with an answer whose values may be wrong
// or incomplete (Annotations.Doubtful).
type OnWarning string

const (
	// RefuseWarnings fails the query with a WarningsError (the default):
	// a sum over a partial answer under-scales.
	RefuseWarnings OnWarning = "refuse"
	// ServeWarnings serves the values; the warnings are logged, counted
	// and shown by explain.
	ServeWarnings OnWarning = "serve"
)

// WarningsError is an answer refused for its warnings (RefuseWarnings).
type WarningsError struct {
	Annotations Annotations
}

func (e *WarningsError) Error() string {
	return "the store's answer may be partial or wrong, and its backend refuses such answers (onWarning: refuse): " + e.Annotations.String()
}

// AnnotatedQuerier is a Querier that also tells what the store said about
// each answer beside its values. Client is one.
type AnnotatedQuerier interface {
	Querier
	// QueryAnnotated is Query with the answer's annotations, which it
	// returns with a refused answer's WarningsError too.
	QueryAnnotated(ctx context.Context, expr string) (model.Vector, Annotations, error)
}
