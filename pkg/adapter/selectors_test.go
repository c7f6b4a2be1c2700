package adapter

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/filters"
	"k8s.io/apiserver/pkg/endpoints/request"
)

// withRequestInfo parses each request's info as the API server's filter
// chain does before the adapter's handlers see it.
func withRequestInfo(h http.Handler) http.Handler {
	return filters.WithRequestInfo(h, &request.RequestInfoFactory{APIPrefixes: sets.NewString("api", "apis"), GrouplessAPIPrefixes: sets.NewString("api")})
}

func TestRejectMalformedSelectors(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := withRequestInfo(rejectMalformedSelectors(next))
	for _, tc := range []struct {
		name, path, query string
		code              int
	}{
		{"passes a valid metric selector", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/d/pods/*/m", "metricLabelSelector=endpoint in (a,b)&labelSelector=app=x", http.StatusTeapot},
		{"rejects a PromQL matcher in a metric selector", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/d/pods/*/m", `metricLabelSelector=endpoint=~".*"`, http.StatusBadRequest},
		{"rejects a quote in a value", "/apis/custom.metrics.k8s.io/v1beta1/namespaces/d/pods/*/m", `metricLabelSelector=a="b`, http.StatusBadRequest},
		{"rejects a bad label selector", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/d/pods/*/m", `labelSelector=app in (`, http.StatusBadRequest},
		{"rejects a bad external metric selector", "/apis/external.metrics.k8s.io/v1beta1/namespaces/d/m", `labelSelector=a,,b`, http.StatusBadRequest},
		{"rejects a bad field selector", "/apis/metrics.k8s.io/v1beta1/pods", `fieldSelector=metadata.name==x==y`, http.StatusBadRequest},
		{"leaves other paths alone", "/readyz", `labelSelector=app in (`, http.StatusTeapot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path+"?"+q.Encode(), nil))
			if rec.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.code, rec.Body)
			}
			if tc.code != http.StatusBadRequest {
				return
			}
			var status metav1.Status
			if err := json.Unmarshal(rec.Body.Bytes(), &status); err != nil || status.Reason != metav1.StatusReasonBadRequest || !strings.Contains(status.Message, "elector") {
				t.Errorf("body %s: want a BadRequest Status naming the selector (%v)", rec.Body, err)
			}
		})
	}
}
