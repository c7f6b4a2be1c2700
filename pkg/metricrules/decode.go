package metricrules

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// Decode reads the MetricRules of a YAML file (one or more documents, as
// kubectl apply takes them), for check-config. Other kinds, unknown
// fields and a MetricRule without a namespace are errors naming the
// document.
func Decode(data []byte, source string) ([]*v1alpha1.MetricRule, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*v1alpha1.MetricRule
	var errs []error
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("---")) {
			continue
		}
		var mr v1alpha1.MetricRule
		if err := yaml.UnmarshalStrict(raw, &mr); err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %w", source, doc, err))
			continue
		}
		switch {
		case mr.APIVersion != v1alpha1.SchemeGroupVersion.String() || mr.Kind != "MetricRule":
			errs = append(errs, fmt.Errorf("%s: document %d: %s %s is not a MetricRule (%s)", source, doc, mr.APIVersion, mr.Kind, v1alpha1.SchemeGroupVersion))
		case mr.Namespace == "" || mr.Name == "":
			errs = append(errs, fmt.Errorf("%s: document %d: metadata.name and metadata.namespace are required: a MetricRule serves its namespace", source, doc))
		default:
			if mr.Spec.API == "" {
				mr.Spec.API = v1alpha1.Custom // the CRD's default
			}
			mr.Generation = 1
			out = append(out, &mr)
		}
	}
	return out, errors.Join(errs...)
}

// List lists the cluster's MetricRules once (adapter explain).
func List(ctx context.Context, client dynamic.Interface) ([]*v1alpha1.MetricRule, error) {
	list, err := client.Resource(v1alpha1.Resource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing MetricRules: %w", err)
	}
	out := make([]*v1alpha1.MetricRule, 0, len(list.Items))
	for i := range list.Items {
		mr, err := FromUnstructured(&list.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, mr)
	}
	return out, nil
}

// Accepted splits the accepted rules of outcomes by API.
func Accepted(outcomes []Outcome) (custom, external []*rules.Rule) {
	for _, o := range outcomes {
		switch {
		case o.Rule == nil:
		case o.Object.Spec.API == v1alpha1.External:
			external = append(external, o.Rule)
		default:
			custom = append(custom, o.Rule)
		}
	}
	return custom, external
}
