package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// hostileNames are object names, namespaces and metric names a request's
// URL may carry: none names an object, and none may reach another
// object's value or change a query's shape.
func hostileNames(pod string) []string {
	return []string{
		".*", "app.*", pod + ".*", pod + "|" + pod, `a"b`, `a\b`, `\`, `"}`, `"} or vector(1) or {a="`,
		`a|b`, "(", "[", "${1}", "%", "é", "app-" + strings.Repeat("x", 300),
	}
}

// set renders a set-based selector of n values, the last one last.
func set(key, op string, n int, last string) string {
	vals := make([]string, 0, n)
	for i := range n - 1 {
		vals = append(vals, fmt.Sprintf("v%d", i))
	}
	return fmt.Sprintf("%s %s (%s)", key, op, strings.Join(append(vals, last), ","))
}

// expectation judges one answer.
type expectation int

const (
	// bad: 400.
	bad expectation = iota
	// nothing: a 4xx, or 200 with no items.
	nothing
	// ownPods: 200 with exactly the namespace's app pods (for a list of
	// pods), or exactly one item (an external metric).
	ownPods
)

func (e expectation) String() string {
	return [...]string{"400", "a 4xx or an empty list", "200 with exactly the app's pods"}[e]
}

// judge returns why o does not meet e, or "".
func judge(o outcome, e expectation, pods []string) string {
	var list struct {
		Items []struct {
			DescribedObject struct{ Name string } `json:"describedObject"`
			Metadata        struct{ Name string } `json:"metadata"`
		} `json:"items"`
	}
	if o.code == http.StatusOK {
		if err := json.Unmarshal(o.body, &list); err != nil {
			return "undecodable 200: " + err.Error()
		}
	}
	switch e {
	case bad:
		if o.code != http.StatusBadRequest {
			return "not 400"
		}
	case nothing:
		if o.code/100 == 4 {
			return ""
		}
		if o.code != http.StatusOK || len(list.Items) > 0 || !strings.Contains(string(o.body), `"items"`) {
			return "a value for something that does not exist"
		}
	case ownPods:
		if o.code != http.StatusOK {
			return "not 200"
		}
		var names []string
		for _, it := range list.Items {
			names = append(names, it.DescribedObject.Name+it.Metadata.Name)
		}
		slices.Sort(names)
		if strings.Contains(o.path, "external.metrics") {
			if len(list.Items) != 1 {
				return fmt.Sprintf("%d values, want the one total", len(list.Items))
			}
		} else if !slices.Equal(names, pods) {
			return fmt.Sprintf("values for %q, want %q", names, pods)
		}
	}
	return ""
}

// TestHostileInput sends object names, namespaces, metric names and
// selectors carrying quotes, backslashes, `"}`, regular expression
// metacharacters and 10,000-value sets, through the API server and to the
// adapter directly: each gets a 4xx or an empty list, never a 5xx, never a
// value from another object; the 10,000-value sets that include the app
// get exactly its values.
func TestHostileInput(t *testing.T) {
	steady(t)
	ctx := context.Background()
	pods, err := readyPods(ctx, namespace)
	if err != nil || len(pods) == 0 {
		t.Fatalf("the app's pods: %v %v", pods, err)
	}
	type request struct {
		path string
		want expectation
	}
	var reqs []request
	custom := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace + "/"
	for _, name := range hostileNames(pods[0]) {
		n := url.PathEscape(name)
		for _, p := range []string{
			custom + "pods/" + n + "/packets-per-second",
			custom + "deployments.apps/" + n + "/requests-per-second",
			custom + "services/" + n + "/packets-per-second",
			custom + "ingresses.networking.k8s.io/" + n + "/requests-per-second",
			custom + "pods/*/" + n,
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + n + "/metrics/requests-per-second",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + n + "/pods/*/packets-per-second",
			"/apis/metrics.k8s.io/v1beta1/namespaces/" + namespace + "/pods/" + n,
			"/apis/external.metrics.k8s.io/v1beta1/namespaces/" + n + "/app_requests_per_second",
			"/apis/external.metrics.k8s.io/v1beta1/namespaces/" + namespace + "/" + n,
		} {
			reqs = append(reqs, request{p, nothing})
		}
	}
	q := func(base string, kv ...string) string {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return base + "?" + v.Encode()
	}
	podsList := custom + "pods/*/packets-per-second"
	external := "/apis/external.metrics.k8s.io/v1beta1/namespaces/" + namespace + "/app_requests_per_second"
	resource := "/apis/metrics.k8s.io/v1beta1/namespaces/" + namespace + "/pods"
	reqs = append(reqs,
		request{q(podsList, "labelSelector", `app in (a"b)`), bad},
		request{q(podsList, "labelSelector", `app=.*`), bad},
		request{q(podsList, "labelSelector", `app=x"}`), bad},
		request{q(podsList, "labelSelector", `app in (`), bad},
		request{q(podsList, "labelSelector", `app=app,x=y\`), bad},
		request{q(podsList, "labelSelector", set("app", "in", 10000, app)), ownPods},
		request{q(podsList, "labelSelector", set("app", "notin", 10000, "w")), ownPods},
		request{q(podsList, "labelSelector", "app=nothing"), nothing},
		request{q(podsList, "labelSelector", "app="+app, "metricLabelSelector", `endpoint=a"b`), bad},
		request{q(podsList, "labelSelector", "app="+app, "metricLabelSelector", `endpoint=~".*"`), bad},
		request{q(podsList, "labelSelector", "app="+app, "metricLabelSelector", `endpoint in (a|b)`), bad},
		request{q(podsList, "labelSelector", "app="+app, "metricLabelSelector", set("endpoint", "notin", 10000, "w")), ownPods},
		request{q(podsList, "labelSelector", "app="+app, "metricLabelSelector", set("endpoint", "in", 10000, "w")), nothing},
		request{q(podsList, "labelSelector", "app="+app, "fieldSelector", "metadata.name"), bad},
		request{q(external, "labelSelector", `container=a"b`), bad},
		request{q(external, "labelSelector", `container=~app`), bad},
		request{q(external, "labelSelector", set("container", "in", 10000, "app")), ownPods},
		request{q(external, "labelSelector", "container=nothing"), nothing},
		request{q(resource, "labelSelector", set("app", "in", 10000, app)), ownPods},
		request{q(resource, "labelSelector", `app in (a"b)`), bad},
	)

	var outs []outcome
	for _, base := range []string{stack.ServerURL, stack.AdapterURL} {
		for _, r := range reqs {
			o := get(ctx, base, r.path)
			outs = append(outs, o)
			if why := judge(o, r.want, pods); why != "" {
				where := "through the API server"
				if base == stack.AdapterURL {
					where = "to the adapter"
				}
				t.Errorf("%s: want %s, got %s: %s", where, r.want, why, o)
			}
		}
	}
	// The pods may have changed while the requests ran (they must not:
	// the HPA holds them); a change would explain a mismatch above.
	if now, err := readyPods(ctx, namespace); err != nil || !slices.Equal(now, pods) {
		t.Errorf("the app's pods changed during the test: %v -> %v (%v)", pods, now, err)
	}
	byCode, worst := summary(outs)
	report(t, "%d hostile requests (%d kinds, through the API server and to the adapter): %s; slowest %s",
		len(outs), len(reqs), codes(byCode), worst.Round(time.Millisecond))
}
