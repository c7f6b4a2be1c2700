package adapter

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-openapi/pkg/builder"
	"k8s.io/kube-openapi/pkg/builder3"
	openapicommon "k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/validation/spec"
	metricsv1beta1 "k8s.io/metrics/pkg/apis/metrics/v1beta1"

	resourceopenapi "github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resourcemetrics/openapi"
)

// TestOpenAPIReferencesResolve checks the OpenAPI definitions served with
// every API enabled, and with metrics.k8s.io alone: each definition that the
// adapter's own getter (pkg/resourcemetrics/openapi) returns, and each one
// reachable from the served API groups' types, refers only to definitions
// that exist. The getters are generated separately (custom-metrics-apiserver's
// core, custom and external metrics; ours for metrics.k8s.io) and merged, so
// a getter that names a type differently from the getter that defines it
// leaves a dangling reference: openapi-gen names a type whose package was not
// one of its inputs by Go import path, where definitions are keyed by model
// name (io.k8s....).
//
// Definitions that nothing served reaches are not checked:
// custom-metrics-apiserver's core getter has core/v1 and meta/v1 types
// (HTTPGetAction, WatchEvent, ...) that refer to intstr.IntOrString and
// runtime.RawExtension by Go import path, and defines neither.
func TestOpenAPIReferencesResolve(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		custom, external, resource bool
	}{
		{name: "every API", custom: true, external: true, resource: true},
		{name: "metrics.k8s.io only", resource: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v2, v3 := openAPIConfigs(tc.custom, tc.external, tc.resource)
			checkOpenAPIReferences(t, v2, v3)
		})
	}
}

// checkOpenAPIReferences is TestOpenAPIReferencesResolve for one
// configuration.
func checkOpenAPIReferences(t *testing.T, v2 *openapicommon.Config, v3 *openapicommon.OpenAPIV3Config) {
	t.Helper()
	ref := func(name string) spec.Ref {
		return spec.MustCreateRef("#/definitions/" + openapicommon.EscapeJsonPointer(name))
	}
	defs := v2.GetDefinitions(ref)
	for _, name := range []string{
		metricsv1beta1.NodeMetrics{}.OpenAPIModelName(),
		metricsv1beta1.NodeMetricsList{}.OpenAPIModelName(),
		metricsv1beta1.PodMetrics{}.OpenAPIModelName(),
		metricsv1beta1.PodMetricsList{}.OpenAPIModelName(),
		metricsv1beta1.ContainerMetrics{}.OpenAPIModelName(),
		metav1.ObjectMeta{}.OpenAPIModelName(),
		resource.Quantity{}.OpenAPIModelName(),
	} {
		if _, ok := defs[name]; !ok {
			t.Errorf("%s is not defined", name)
		}
	}

	// What the API server serves: the types of metrics.k8s.io and
	// custom.metrics.k8s.io / external.metrics.k8s.io, and the meta/v1
	// types of discovery and errors.
	roots := []string{
		metav1.Status{}.OpenAPIModelName(),
		metav1.APIGroup{}.OpenAPIModelName(),
		metav1.APIGroupList{}.OpenAPIModelName(),
		metav1.APIResourceList{}.OpenAPIModelName(),
		metav1.APIVersions{}.OpenAPIModelName(),
	}
	for name := range defs {
		if strings.HasPrefix(name, "io.k8s.metrics.pkg.apis.") {
			roots = append(roots, name)
		}
	}
	slices.Sort(roots)
	ours := slices.Sorted(maps.Keys(resourceopenapi.GetOpenAPIDefinitions(ref)))
	checked := map[string]bool{}
	var check func(from, name string)
	check = func(from, name string) {
		def, ok := defs[name]
		if !ok {
			t.Errorf("%s refers to %q, which is not defined", from, name)
			return
		}
		if checked[name] {
			return
		}
		checked[name] = true
		next := map[string]bool{}
		for _, dep := range def.Dependencies {
			next[dep] = true
		}
		for _, r := range refs(t, def.Schema) {
			target, ok := strings.CutPrefix(r, "#/definitions/")
			if !ok {
				t.Errorf("%s: $ref %q is not a definition", name, r)
				continue
			}
			next[unescapeJSONPointer(target)] = true
		}
		for _, dep := range slices.Sorted(maps.Keys(next)) {
			check(name, dep)
		}
	}
	for _, name := range slices.Concat(roots, ours) {
		check("the served API", name)
	}
	if t.Failed() {
		return
	}

	// The documents as the API server builds them: the builders fail on a
	// dependency that is not defined, and each $ref must name a definition
	// of the built document.
	swagger, err := builder.BuildOpenAPIDefinitionsForResources(v2, roots...)
	if err != nil {
		t.Fatalf("building the OpenAPI v2 definitions: %v", err)
	}
	checkBuiltRefs(t, "v2", "#/definitions/", swagger.Definitions)
	schemas, err := builder3.BuildOpenAPIDefinitionsForResources(v3, roots...)
	if err != nil {
		t.Fatalf("building the OpenAPI v3 schemas: %v", err)
	}
	checkBuiltRefs(t, "v3", "#/components/schemas/", schemas)
}

// checkBuiltRefs checks that every $ref in a built document's definitions
// is prefix followed by one of their names (which the builders escape as
// the refs are).
func checkBuiltRefs[S spec.Schema | *spec.Schema](t *testing.T, doc, prefix string, defs map[string]S) {
	t.Helper()
	if len(defs) == 0 {
		t.Fatalf("OpenAPI %s: no definitions built", doc)
	}
	for _, name := range slices.Sorted(maps.Keys(defs)) {
		for _, ref := range refs(t, defs[name]) {
			target, ok := strings.CutPrefix(ref, prefix)
			if _, defined := defs[target]; !ok || !defined {
				t.Errorf("OpenAPI %s: %s refers to %q, which is not defined", doc, name, ref)
			}
		}
	}
}

// refs returns every "$ref" in v's JSON form.
func refs(t *testing.T, v any) []string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	if err := json.Unmarshal(data, &tree); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(any)
	walk = func(n any) {
		switch n := n.(type) {
		case map[string]any:
			if ref, ok := n["$ref"].(string); ok {
				out = append(out, ref)
			}
			for _, c := range n {
				walk(c)
			}
		case []any:
			for _, c := range n {
				walk(c)
			}
		}
	}
	walk(tree)
	return out
}

// unescapeJSONPointer undoes openapicommon.EscapeJsonPointer (RFC 6901).
func unescapeJSONPointer(s string) string {
	return strings.NewReplacer("~1", "/", "~0", "~").Replace(s)
}
