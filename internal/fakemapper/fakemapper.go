// Package fakemapper provides a fixed RESTMapper for tests: the core and
// apps resources, Ingresses, Nodes and ConfigMaps, with their singular
// forms (rules.BuiltinMapper). It does no discovery.
package fakemapper

import (
	apimeta "k8s.io/apimachinery/pkg/api/meta"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// New returns the mapper.
func New() apimeta.RESTMapper { return rules.BuiltinMapper() }
