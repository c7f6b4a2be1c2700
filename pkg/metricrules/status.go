package metricrules

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/catalog"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// Observation is what the adapter made of every rule in one discovery
// round: the series listed, and the metrics each API serves, with the
// definitions other rules won over.
type Observation struct {
	Round    discovery.Result
	Served   []catalog.Served
	Overlaps []catalog.Overlap
	// Dropped is how many metrics each rule would serve past
	// catalog.MaxTeamRuleMetrics.
	Dropped map[*rules.Rule]int
}

// MaxStatusMetrics is how many metrics status.metrics lists; the Serving
// condition says how many there are.
const MaxStatusMetrics = 100

// Status is the status of o: whether it was accepted, and, from the last
// observation (nil before the first), what it discovered and serves, and
// what overrules it.
func Status(o Outcome, obs *Observation) v1alpha1.MetricRuleStatus {
	st := v1alpha1.MetricRuleStatus{ObservedGeneration: o.Object.Generation, Conditions: slices.Clone(o.Object.Status.Conditions)}
	set := func(typ string, status metav1.ConditionStatus, reason, msg string) {
		apimeta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: typ, Status: status, Reason: reason, Message: message(msg), ObservedGeneration: o.Object.Generation,
			LastTransitionTime: seconds(time.Now()),
		})
	}
	switch {
	case o.OverLimit:
		set(v1alpha1.Accepted, metav1.ConditionFalse, "OverLimit", "the namespace has as many older MetricRules as the adapter serves per namespace (--metric-rules-per-namespace)")
	case o.Err != nil:
		set(v1alpha1.Accepted, metav1.ConditionFalse, "Invalid", o.Err.Error())
	default:
		set(v1alpha1.Accepted, metav1.ConditionTrue, "Confined", fmt.Sprintf("served in namespace %s only, from its series only", o.Object.Namespace))
	}
	if o.Rule == nil {
		set(v1alpha1.Serving, metav1.ConditionFalse, "NotAccepted", "the rule is not accepted")
		return st
	}
	r := o.Rule
	st.SeriesQuery = r.SeriesQuery()
	if obs == nil {
		set(v1alpha1.Serving, metav1.ConditionUnknown, "NotListedYet", "its series have not been listed yet")
		return st
	}
	series, listed := obs.Round.Series[r.Listing()]
	st.Series = int32(min(len(series), 1<<31-1))
	if at, ok := obs.Round.Listed[r.Listing()]; ok {
		t := seconds(at)
		st.LastDiscoveryTime = &t
	}
	for _, s := range obs.Served {
		if s.Rule == r {
			st.Metrics = append(st.Metrics, name(s.Resource, s.Metric))
		}
	}
	slices.Sort(st.Metrics)
	st.Metrics = slices.Compact(st.Metrics)
	var overruled []string
	conflict := false
	for _, ov := range obs.Overlaps {
		if ov.Ignored.Rule == r && !slices.Contains(st.Metrics, name(ov.Resource, ov.Metric)) {
			overruled = append(overruled, fmt.Sprintf("%s serves %s", ov.Kept.Rule, name(ov.Resource, ov.Metric)))
			conflict = conflict || ov.Kept.Rule.Owner() != nil
		}
	}
	slices.Sort(overruled)
	overruled = slices.Compact(overruled)
	switch {
	case !listed && obs.Round.Failed[r.Listing()] != nil:
		set(v1alpha1.Serving, metav1.ConditionFalse, "NotListed", "listing its series failed: "+obs.Round.Failed[r.Listing()].Error())
	case !listed:
		set(v1alpha1.Serving, metav1.ConditionUnknown, "NotListedYet", "its series have not been listed yet")
	case len(st.Metrics) > 0:
		msg := fmt.Sprintf("%d metrics", len(st.Metrics))
		if len(st.Metrics) > MaxStatusMetrics {
			msg += fmt.Sprintf(" (status.metrics lists the first %d)", MaxStatusMetrics)
			st.Metrics = st.Metrics[:MaxStatusMetrics]
		}
		if n := obs.Dropped[r]; n > 0 {
			msg += fmt.Sprintf("; %d more not served: a MetricRule serves at most %d metrics", n, catalog.MaxTeamRuleMetrics)
		}
		if len(overruled) > 0 {
			msg += "; not served here, as other rules serve them: " + strings.Join(overruled, "; ")
		}
		set(v1alpha1.Serving, metav1.ConditionTrue, "Serving", msg)
	case len(overruled) > 0 && conflict:
		set(v1alpha1.Serving, metav1.ConditionFalse, "Conflict", "an older MetricRule of the namespace serves what it names: "+strings.Join(overruled, "; "))
	case len(overruled) > 0:
		set(v1alpha1.Serving, metav1.ConditionFalse, "Overruled", "the rules file serves what it names, in every namespace: "+strings.Join(overruled, "; "))
	case len(series) == 0:
		set(v1alpha1.Serving, metav1.ConditionFalse, "NoSeries", "Prometheus has no series for "+r.SeriesQuery())
	default:
		set(v1alpha1.Serving, metav1.ConditionFalse, "NoMetrics", fmt.Sprintf("none of its %d series becomes a metric: check name, seriesFilters and resources", len(series)))
	}
	return st
}

// MaxMessage is the most of a message a status quotes: what a rule's
// author wrote, or Prometheus answered, is excerpted, never copied whole.
const MaxMessage = 1024

// message is msg cut to MaxMessage bytes, saying so.
func message(msg string) string {
	if len(msg) <= MaxMessage {
		return msg
	}
	return fmt.Sprintf("%s... (%d bytes)", promql.Cut(msg, MaxMessage), len(msg))
}

// seconds is t as the API server stores it: a status read back compares
// equal to the one written.
func seconds(t time.Time) metav1.Time { return metav1.NewTime(t.Truncate(time.Second)) }

// name is a metric as discovery lists it: pods/requests-per-second, or an
// external metric's name.
func name(resource, metric string) string {
	if resource == "" {
		return metric
	}
	return resource + "/" + metric
}

// refreshEvery is how old status.lastDiscoveryTime may grow before an
// otherwise unchanged status is written again: every discovery round would
// be a write per MetricRule per round.
const refreshEvery = 10 * time.Minute

// needsWrite reports whether want differs from have beyond what is not
// worth a write: a lastDiscoveryTime younger than refreshEvery.
func needsWrite(have, want v1alpha1.MetricRuleStatus) bool {
	a, b := have, want // only b's LastDiscoveryTime pointer is replaced
	if a.LastDiscoveryTime != nil && b.LastDiscoveryTime != nil && b.LastDiscoveryTime.Sub(a.LastDiscoveryTime.Time) < refreshEvery {
		b.LastDiscoveryTime = a.LastDiscoveryTime
	}
	return !equality.Semantic.DeepEqual(a, b)
}
