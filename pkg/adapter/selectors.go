package adapter

import (
	"fmt"
	"net/http"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
)

// metricsAPIPrefixes are the paths of the APIs the adapter serves.
var metricsAPIPrefixes = []string{
	"/apis/custom.metrics.k8s.io/",
	"/apis/external.metrics.k8s.io/",
	"/apis/metrics.k8s.io/",
}

// rejectMalformedSelectors answers 400 for a request to a metrics API whose
// labelSelector, metricLabelSelector or fieldSelector does not parse.
//
// It exists because custom-metrics-apiserver parses metricLabelSelector in
// its storage and returns labels.Parse's error as it is, which the API
// server answers with a 500: a typo in an HPA's metric selector
// (endpoint=~".*", a value with a quote) would look like a broken adapter.
// Checking the query here, inside the filter chain (after authentication
// and authorization), turns it into the 400 it is.
func rejectMalformedSelectors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if isMetricsAPI(req.URL.Path) {
			if err := checkSelectors(req); err != nil {
				apistatus.Write(w, req, apierrors.NewBadRequest(err.Error()))
				return
			}
		}
		next.ServeHTTP(w, req)
	})
}

func isMetricsAPI(path string) bool {
	for _, p := range metricsAPIPrefixes {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

func checkSelectors(req *http.Request) error {
	q := req.URL.Query()
	for _, name := range []string{"labelSelector", "metricLabelSelector"} {
		for _, v := range q[name] {
			if _, err := labels.Parse(v); err != nil {
				return fmt.Errorf("%s %q: %w", name, v, err)
			}
		}
	}
	for _, v := range q["fieldSelector"] {
		if _, err := fields.ParseSelector(v); err != nil {
			return fmt.Errorf("fieldSelector %q: %w", v, err)
		}
	}
	return nil
}
