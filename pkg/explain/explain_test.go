package explain

import (
	"net/url"
	"strings"
	"testing"
)

// TestParseArgsAndPathAgree: each command line form becomes the API path
// an HPA sends, and that path parses back to the same request.
func TestParseArgsAndPathAgree(t *testing.T) {
	for _, tc := range []struct {
		arg, ns, sel, msel string
		path               string
	}{
		{"pods/requests-per-second", "default", "app=app", "",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second?labelSelector=app%3Dapp"},
		{"pod/app-1/requests-per-second", "shop", "", "endpoint=mem",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/app-1/requests-per-second?metricLabelSelector=endpoint%3Dmem"},
		{"ingresses.networking.k8s.io/main-route/requests-per-second", "default", "", "",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/ingresses.networking.k8s.io/main-route/requests-per-second"},
		{"namespaces/default/requests-per-second", "ignored", "", "",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/metrics/requests-per-second"},
		{"nodes/n1/cpu-rate", "ignored", "", "",
			"/apis/custom.metrics.k8s.io/v1beta2/nodes/n1/cpu-rate"},
		{"external/app_requests_per_second", "default", "", "endpoint=mem",
			"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/app_requests_per_second?labelSelector=endpoint%3Dmem"},
	} {
		req, err := ParseArgs(tc.arg, tc.ns, tc.sel, tc.msel)
		if err != nil {
			t.Errorf("ParseArgs(%q): %v", tc.arg, err)
			continue
		}
		if got := req.Path(); got != tc.path {
			t.Errorf("ParseArgs(%q).Path() = %s, want %s", tc.arg, got, tc.path)
		}
		u, err := url.Parse(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePath(u.Path, u.Query())
		if err != nil {
			t.Errorf("ParsePath(%s): %v", tc.path, err)
			continue
		}
		if back.Path() != tc.path {
			t.Errorf("ParsePath(%s) comes back as %s", tc.path, back.Path())
		}
	}
}

func TestParseRejectsWhatIsNotARequest(t *testing.T) {
	for _, tc := range []struct{ arg, sel, msel, want string }{
		{"requests-per-second", "", "", "want RESOURCE/METRIC"},
		{"pods//requests-per-second", "", "", "want RESOURCE/METRIC"},
		{"a/b/c/d", "", "", "want RESOURCE/METRIC"},
		{"pods/app-1/requests-per-second", "app=app", "", "names one object"},
		{"external/x", "app=app", "", "--metric-selector"},
		{"namespaces/requests-per-second", "", "", "name the namespace"},
		{"pods/requests-per-second", "app in (", "", "--selector"},
		{"pods/requests-per-second", "", "endpoint=~x", "--metric-selector"},
	} {
		_, err := ParseArgs(tc.arg, "default", tc.sel, tc.msel)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseArgs(%q, %q, %q) = %v, want an error saying %q", tc.arg, tc.sel, tc.msel, err, tc.want)
		}
	}
	for _, p := range []string{"/", "/api/v1/pods", "/apis/apps/v1/deployments", "/apis/custom.metrics.k8s.io/v1beta2/a/b/c/d/e/f",
		"/apis/external.metrics.k8s.io/v1beta1/x", "/apis/custom.metrics.k8s.io/bogus/pods/p/m",
		"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/requests-per-second", "/apis/external.metrics.k8s.io/v1beta2/namespaces/default/m"} {
		if _, err := ParsePath(p, url.Values{}); err == nil {
			t.Errorf("ParsePath(%q) accepted it", p)
		}
	}
}

// TestParsePathKeepsTheVersion: a v1beta1 request is echoed as v1beta1.
func TestParsePathKeepsTheVersion(t *testing.T) {
	const p = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/requests-per-second"
	req, err := ParsePath(p, url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	if got := req.Path(); got != p {
		t.Errorf("Path() = %s, want %s", got, p)
	}
}
