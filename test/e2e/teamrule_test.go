package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
	externalv1beta1 "k8s.io/metrics/pkg/apis/external_metrics/v1beta1"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// stealing are MetricRules of team-b whose PromQL asks for team-a's series
// every way a rule's author can write it: a namespace matcher, a regular
// expression over namespaces, every series by name, or, unless, offset, a
// subquery, label_replace.
var stealing = map[string]v1alpha1.MetricRuleSpec{
	"steal-pods": {
		API:         v1alpha1.Custom,
		SeriesQuery: `{__name__=~".+",namespace=~"team-.*"}`,
		Resources: v1alpha1.ResourceMapping{Overrides: map[string]v1alpha1.GroupResource{
			"namespace": {Resource: "namespace"}, "pod": {Resource: "pod"},
		}},
		Name: v1alpha1.NameMapping{Matches: "^app_requests_total$", As: "stolen-requests-per-second"},
		MetricsQuery: `sum(rate(app_requests_total{namespace="team-a"}[1m]) ` +
			`or rate({__name__="app_requests_total",namespace=~"team-a|team-b"}[1m] offset 1s) ` +
			`or max_over_time(rate(app_requests_total{namespace!="team-b"}[1m])[2m:10s])) by (<<.GroupBy>>)`,
	},
	"steal-external": {
		API:         v1alpha1.External,
		SeriesQuery: `app_requests_total{namespace="team-a"}`,
		Name:        v1alpha1.NameMapping{Matches: "^app_requests_total$", As: "stolen_requests_per_second"},
		MetricsQuery: `sum(label_replace(rate(app_requests_total{namespace="team-a"}[1m]), "namespace", "team-b", "namespace", ".*") ` +
			`unless on() absent(app_requests_total{namespace="team-a"}))`,
	},
}

// TestTeamRule: a developer who may edit namespace team-a (the aggregated
// ClusterRole of manifests/metric-rules, through the edit role) writes a
// MetricRule there (manifests/hpa/team-rule); its status says what it
// discovered, and the HPA in team-a scales on its metric on the real HPA
// controller. Team-b's MetricRules that ask for team-a's series, however
// their PromQL says it, get team-b's own values, never team-a's; one that
// cannot be confined is refused in its status.
func TestTeamRule(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	const teamA, teamB, dev = "team-a", "team-b", "team-a-dev"
	for _, n := range []string{teamA, teamB} {
		if err := stack.DeployApp(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	admin := dynamic.NewForConfigOrDie(stack.Admin).Resource(v1alpha1.Resource)

	// team-a's developer, with edit in team-a only.
	devRules := editor(ctx, t, teamA, dev)

	objs, err := stack.Render(ctx, "manifests/hpa/team-rule")
	if err != nil {
		t.Fatal(err)
	}
	var rule *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "MetricRule" {
			rule = o
		}
	}
	if rule == nil {
		t.Fatal("manifests/hpa/team-rule has no MetricRule")
	}
	rule.SetNamespace(teamA)
	// The edit role takes in the aggregated ClusterRole within seconds.
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := devRules.Namespace(teamA).Create(ctx, rule, metav1.CreateOptions{})
		return err == nil, nil
	}); err != nil {
		_, err := devRules.Namespace(teamA).Create(ctx, rule, metav1.CreateOptions{})
		t.Fatalf("a user with edit in %s cannot create a MetricRule there: %v", teamA, err)
	}
	other := rule.DeepCopy()
	other.SetNamespace(teamB)
	if _, err := devRules.Namespace(teamB).Create(ctx, other, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("team-a's developer creating a MetricRule in team-b: %v, want 403", err)
	}

	st := waitServing(ctx, t, admin.Namespace(teamA), "requests")
	if !strings.Contains(st.SeriesQuery, `namespace="team-a"`) || st.Series < 1 ||
		!slices.Contains(st.Metrics, "pods/team-requests-per-second") || st.LastDiscoveryTime == nil {
		t.Errorf("team-a's rule's status: %+v", st)
	}

	// Team-b's rules that ask for team-a's series, and one that cannot be
	// confined.
	for name, spec := range stealing {
		createRule(ctx, t, admin, teamB, name, spec)
	}
	unconfinable := stealing["steal-pods"]
	unconfinable.Name.As = "info-requests"
	unconfinable.MetricsQuery = `info(sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>))`
	createRule(ctx, t, admin, teamB, "unconfinable", unconfinable)
	for name := range stealing {
		st := waitServing(ctx, t, admin.Namespace(teamB), name)
		if !strings.Contains(st.SeriesQuery, `namespace="team-b"`) || strings.Contains(st.SeriesQuery, "team-a") {
			t.Errorf("%s/%s lists %s, want team-b's series only", teamB, name, st.SeriesQuery)
		}
	}
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		st, ok := status(ctx, admin.Namespace(teamB), "unconfinable")
		c := condition(st, v1alpha1.Accepted)
		return ok && c != nil && c.Status == metav1.ConditionFalse && c.Reason == "Invalid" && strings.Contains(c.Message, "spec.metricsQuery"), nil
	}); err != nil {
		st, _ := status(ctx, admin.Namespace(teamB), "unconfinable")
		t.Errorf("a rule with info(): %+v, want Accepted False, Invalid, naming spec.metricsQuery", st.Conditions)
	}

	// 20 req/s offered to team-a, 2 to team-b: team-b's rules answer about
	// what team-b's pods delivered, team-a's metric about what team-a's
	// delivered (the bounds, 3/4 and 1/2, are those of the offered 20 and
	// 2); team-a's metric is not served in team-b.
	const offeredA, offeredB = 20.0, 2.0
	_, stopA := startLoad(t, teamA, loadPath, offeredA)
	_, stopB := startLoad(t, teamB, loadPath, offeredB)
	loadA, loadB := &deliveredLoad{namespace: teamA}, &deliveredLoad{namespace: teamB}
	var a, b, bExternal, deliveredA, deliveredB float64
	var lastErr error
	served := func() bool { return a > 0.75*deliveredA && b > 0.5*deliveredB && bExternal > 0.5*deliveredB }
	short := func() string {
		var s []string
		for _, m := range []string{shortfall(teamA, deliveredA, offeredA), shortfall(teamB, deliveredB, offeredB)} {
			if m != "" {
				s = append(s, m)
			}
		}
		return strings.Join(s, "; ")
	}
	err = wait.PollUntilContextTimeout(ctx, 2*time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		// Both namespaces read at every poll, so that both cover the minute.
		var errA, errB error
		deliveredA, errA = loadA.measure(ctx)
		deliveredB, errB = loadB.measure(ctx)
		if lastErr = errors.Join(errA, errB); lastErr != nil {
			return false, nil
		}
		if a, lastErr = podsSum(ctx, teamA, "team-requests-per-second"); lastErr != nil {
			return false, nil
		}
		if b, lastErr = podsSum(ctx, teamB, "stolen-requests-per-second"); lastErr != nil {
			return false, nil
		}
		if bExternal, lastErr = externalSum(ctx, teamB, "stolen_requests_per_second"); lastErr != nil {
			return false, nil
		}
		return served() && short() == "", nil
	})
	stopA()
	stopB()
	if err != nil {
		note := ""
		if sh := short(); sh != "" {
			note = " (" + sh + ")"
		}
		switch {
		case lastErr != nil:
			t.Fatalf("team-a's metric %.1f, team-b's %.1f and %.1f, delivered %.1f and %.1f req/s%s; last error: %v", a, b, bExternal, deliveredA, deliveredB, note, lastErr)
		case served():
			t.Fatalf("%s: team-a's metric %.1f, team-b's %.1f and %.1f are the load delivered, a shortfall of the load, not a wrong value", short(), a, b, bExternal)
		default:
			t.Fatalf("served value wrong: team-a's metric %.1f (want above 3/4 of the %.1f req/s team-a's pods delivered over the last minute), team-b's %.1f and %.1f (want above half the %.1f team-b's delivered)%s",
				a, deliveredA, b, bExternal, deliveredB, note)
		}
	}
	t.Logf("team-a's metric %.1f req/s (its pods delivered %.1f); team-b's rules that ask for team-a's series: %.1f and %.1f req/s (team-b's pods delivered %.1f)", a, deliveredA, b, bExternal, deliveredB)
	if b > 5 || bExternal > 5 {
		t.Errorf("team-b's rules read team-a's series: %.1f and %.1f req/s, against team-b's own %.1f and team-a's %.1f delivered", b, bExternal, deliveredB, deliveredA)
	}
	code, body := rawGet(ctx, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/"+teamB+"/pods/*/team-requests-per-second")
	if code != 404 || strings.Contains(body, "team-a") || strings.Contains(body, "MetricRule") {
		t.Errorf("team-a's metric asked in team-b: %d %s, want the 404 of a metric nobody serves, naming nothing of team-a's", code, body)
	}

	// adapter explain, with the cluster's MetricRules, names the rule and
	// shows the PromQL as confined: nothing of team-a's.
	args := append(append([]string{"explain"}, stack.AdapterConnectionArgs()...), "--metric-rules", "external/stolen_requests_per_second", "-n", teamB)
	out, exit, err := adapterCommand(ctx, args...)
	if err != nil || exit != 0 || !strings.Contains(out, "MetricRule team-b/steal-external") || !strings.Contains(out, `namespace="team-b"`) || strings.Contains(out, "team-a") {
		t.Errorf("adapter explain of team-b's external rule: exit %d, %v:\n%s", exit, err, out)
	}

	// Live: a deleted rule's metric is gone without a restart.
	if err := admin.Namespace(teamB).Delete(ctx, "steal-external", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		code, _ := rawGet(ctx, "/apis/external.metrics.k8s.io/v1beta1/namespaces/"+teamB+"/stolen_requests_per_second")
		return code == 404, nil
	}); err != nil {
		code, body := rawGet(ctx, "/apis/external.metrics.k8s.io/v1beta1/namespaces/"+teamB+"/stolen_requests_per_second")
		t.Errorf("the deleted rule's metric: %d %s, want 404", code, body)
	}

	// The HPA in team-a scales on the metric of its team's rule.
	hpa, err := stack.HPA(ctx, localstack.SeedHPA{Namespace: teamA, Dir: "manifests/hpa/team-rule", Scale: func(h *autoscalingv2.HorizontalPodAutoscaler) {
		h.Spec.Metrics[0].Pods.Target.AverageValue = resource.NewQuantity(10, resource.DecimalSI)
		h.Spec.MaxReplicas = 3
	}}, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	runHPA(t, ctx, hpa, loadPath, 30, 3)
}

// editor gives user the edit role in namespace, and returns the
// MetricRules as that user may write them.
func editor(ctx context.Context, t *testing.T, namespace, user string) dynamic.NamespaceableResourceInterface {
	t.Helper()
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: user + "-edit"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if _, err := stack.Client.RbacV1().RoleBindings(namespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(stack.Admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	return dynamic.NewForConfigOrDie(cfg).Resource(v1alpha1.Resource)
}

// createRule creates the MetricRule namespace/name.
func createRule(ctx context.Context, t *testing.T, rules dynamic.NamespaceableResourceInterface, namespace, name string, spec v1alpha1.MetricRuleSpec) {
	t.Helper()
	mr := &v1alpha1.MetricRule{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "MetricRule"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       spec,
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rules.Namespace(namespace).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating MetricRule %s/%s: %v", namespace, name, err)
	}
}

// status reads a MetricRule's status.
func status(ctx context.Context, rules dynamic.ResourceInterface, name string) (v1alpha1.MetricRuleStatus, bool) {
	u, err := rules.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return v1alpha1.MetricRuleStatus{}, false
	}
	var mr v1alpha1.MetricRule
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &mr); err != nil {
		return v1alpha1.MetricRuleStatus{}, false
	}
	return mr.Status, mr.Status.ObservedGeneration == mr.Generation
}

func condition(st v1alpha1.MetricRuleStatus, typ string) *metav1.Condition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == typ {
			return &st.Conditions[i]
		}
	}
	return nil
}

// waitServing waits until the MetricRule's status says it is accepted and
// serving, for its current generation.
func waitServing(ctx context.Context, t *testing.T, rules dynamic.ResourceInterface, name string) v1alpha1.MetricRuleStatus {
	t.Helper()
	var st v1alpha1.MetricRuleStatus
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var current bool
		st, current = status(ctx, rules, name)
		a, s := condition(st, v1alpha1.Accepted), condition(st, v1alpha1.Serving)
		return current && a != nil && a.Status == metav1.ConditionTrue && s != nil && s.Status == metav1.ConditionTrue, nil
	})
	if err != nil {
		b, _ := json.MarshalIndent(st, "", "  ")
		t.Fatalf("MetricRule %s is not accepted and serving: %s", name, b)
	}
	return st
}

// rawGet GETs path, with a label selector when not empty, through the API
// server as the admin.
func rawGet(ctx context.Context, path string, labelSelector ...string) (int, string) {
	req := stack.Client.CoreV1().RESTClient().Get().AbsPath(path)
	for _, sel := range labelSelector {
		req = req.Param("labelSelector", sel)
	}
	res := req.Do(ctx)
	var code int
	res.StatusCode(&code)
	b, _ := res.Raw()
	return code, string(b)
}

// podsSum is the sum of a Pods metric over the namespace's app pods.
func podsSum(ctx context.Context, namespace, metric string) (float64, error) {
	code, body := rawGet(ctx, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/"+namespace+"/pods/*/"+metric, "app="+app)
	if code != 200 {
		return 0, fmt.Errorf("%d %s", code, body)
	}
	var list v1beta2.MetricValueList
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		return 0, err
	}
	if len(list.Items) == 0 {
		return 0, fmt.Errorf("no values")
	}
	return sumValues(list.Items), nil
}

// externalSum is the sum of an external metric's values in namespace.
func externalSum(ctx context.Context, namespace, metric string) (float64, error) {
	code, body := rawGet(ctx, "/apis/external.metrics.k8s.io/v1beta1/namespaces/"+namespace+"/"+metric)
	if code != 200 {
		return 0, fmt.Errorf("%d %s", code, body)
	}
	var list externalv1beta1.ExternalMetricValueList
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		return 0, err
	}
	sum := 0.0
	for _, v := range list.Items {
		sum += v.Value.AsApproximateFloat64()
	}
	return sum, nil
}
