package adapter

import (
	"fmt"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apiserver/pkg/endpoints/request"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
)

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
		if info, ok := request.RequestInfoFrom(req.Context()); ok && apiGroupOf(info) != "" {
			if err := checkSelectors(req); err != nil {
				apistatus.Write(w, req, apierrors.NewBadRequest(err.Error()))
				return
			}
		}
		next.ServeHTTP(w, req)
	})
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
