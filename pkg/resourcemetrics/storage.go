package resourcemetrics

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/metrics/pkg/apis/metrics"
)

// podStorage serves pods.metrics.k8s.io: GET one pod's usage, LIST the
// usage of the pods a label (and field) selector matches.
type podStorage struct {
	p *Provider
}

var (
	_ rest.Storage              = (*podStorage)(nil)
	_ rest.Getter               = (*podStorage)(nil)
	_ rest.Lister               = (*podStorage)(nil)
	_ rest.Scoper               = (*podStorage)(nil)
	_ rest.KindProvider         = (*podStorage)(nil)
	_ rest.SingularNameProvider = (*podStorage)(nil)
)

func (s *podStorage) New() runtime.Object     { return &metrics.PodMetrics{} }
func (s *podStorage) NewList() runtime.Object { return &metrics.PodMetricsList{} }
func (s *podStorage) Destroy()                {}
func (s *podStorage) NamespaceScoped() bool   { return true }
func (s *podStorage) Kind() string            { return "PodMetrics" }
func (s *podStorage) GetSingularName() string { return "pod" }

func (s *podStorage) List(ctx context.Context, options *metainternalversion.ListOptions) (runtime.Object, error) {
	labelSel, fieldSel := selectors(options)
	if err := checkFields(fieldSel); err != nil {
		return nil, err
	}
	items, err := s.p.listPods(ctx, genericapirequest.NamespaceValue(ctx), labelSel, fieldSel)
	if err != nil {
		return nil, err
	}
	return &metrics.PodMetricsList{Items: items}, nil
}

func (s *podStorage) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	return s.p.GetPod(ctx, genericapirequest.NamespaceValue(ctx), name)
}

func (s *podStorage) ConvertToTable(_ context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	t := &metav1.Table{ColumnDefinitions: []metav1.TableColumnDefinition{
		{Name: "Name", Type: "string", Format: "name", Description: "Name of the pod"},
		{Name: "CPU", Type: "string", Description: "CPU usage of its containers, in cores"},
		{Name: "Memory", Type: "string", Description: "Memory usage of its containers, in bytes"},
		{Name: "Window", Type: "string", Description: "Period CPU usage is averaged over"},
	}}
	add := func(pm *metrics.PodMetrics) {
		cpu, mem := podTotals(pm)
		t.Rows = append(t.Rows, metav1.TableRow{
			Cells:  []any{pm.Name, cpu.String(), mem.String(), pm.Window.Duration.String()},
			Object: runtime.RawExtension{Object: pm},
		})
	}
	switch o := obj.(type) {
	case *metrics.PodMetrics:
		add(o)
	case *metrics.PodMetricsList:
		for i := range o.Items {
			add(&o.Items[i])
		}
	default:
		return nil, fmt.Errorf("cannot render %T as a table", obj)
	}
	return t, nil
}

// nodeStorage serves nodes.metrics.k8s.io.
type nodeStorage struct {
	p *Provider
}

var (
	_ rest.Storage              = (*nodeStorage)(nil)
	_ rest.Getter               = (*nodeStorage)(nil)
	_ rest.Lister               = (*nodeStorage)(nil)
	_ rest.Scoper               = (*nodeStorage)(nil)
	_ rest.KindProvider         = (*nodeStorage)(nil)
	_ rest.SingularNameProvider = (*nodeStorage)(nil)
)

func (s *nodeStorage) New() runtime.Object     { return &metrics.NodeMetrics{} }
func (s *nodeStorage) NewList() runtime.Object { return &metrics.NodeMetricsList{} }
func (s *nodeStorage) Destroy()                {}
func (s *nodeStorage) NamespaceScoped() bool   { return false }
func (s *nodeStorage) Kind() string            { return "NodeMetrics" }
func (s *nodeStorage) GetSingularName() string { return "node" }

func (s *nodeStorage) List(ctx context.Context, options *metainternalversion.ListOptions) (runtime.Object, error) {
	labelSel, fieldSel := selectors(options)
	if err := checkFields(fieldSel); err != nil {
		return nil, err
	}
	items, err := s.p.listNodes(ctx, labelSel, fieldSel)
	if err != nil {
		return nil, err
	}
	return &metrics.NodeMetricsList{Items: items}, nil
}

func (s *nodeStorage) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	return s.p.GetNode(ctx, name)
}

func (s *nodeStorage) ConvertToTable(_ context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	t := &metav1.Table{ColumnDefinitions: []metav1.TableColumnDefinition{
		{Name: "Name", Type: "string", Format: "name", Description: "Name of the node"},
		{Name: "CPU", Type: "string", Description: "CPU usage, in cores"},
		{Name: "Memory", Type: "string", Description: "Memory usage, in bytes"},
		{Name: "Window", Type: "string", Description: "Period CPU usage is averaged over"},
	}}
	add := func(nm *metrics.NodeMetrics) {
		cpu, mem := nm.Usage["cpu"], nm.Usage["memory"]
		t.Rows = append(t.Rows, metav1.TableRow{
			Cells:  []any{nm.Name, cpu.String(), mem.String(), nm.Window.Duration.String()},
			Object: runtime.RawExtension{Object: nm},
		})
	}
	switch o := obj.(type) {
	case *metrics.NodeMetrics:
		add(o)
	case *metrics.NodeMetricsList:
		for i := range o.Items {
			add(&o.Items[i])
		}
	default:
		return nil, fmt.Errorf("cannot render %T as a table", obj)
	}
	return t, nil
}

// selectors returns the request's label and field selectors, each
// matching everything when absent.
func selectors(options *metainternalversion.ListOptions) (labels.Selector, fields.Selector) {
	l, f := labels.Everything(), fields.Everything()
	if options != nil {
		if options.LabelSelector != nil {
			l = options.LabelSelector
		}
		if options.FieldSelector != nil {
			f = options.FieldSelector
		}
	}
	return l, f
}

// checkFields rejects field selectors on anything but metadata.name and
// metadata.namespace, the fields metrics-server supports.
func checkFields(sel fields.Selector) error {
	for _, r := range sel.Requirements() {
		if r.Field != "metadata.name" && r.Field != "metadata.namespace" {
			return apierrors.NewBadRequest(fmt.Sprintf("field selector %q: only metadata.name and metadata.namespace are supported", r.Field))
		}
	}
	return nil
}

// filterFields keeps the objects a field selector on metadata.name and
// metadata.namespace matches.
func filterFields(objs []*metav1.PartialObjectMetadata, sel fields.Selector) []*metav1.PartialObjectMetadata {
	if sel.Empty() {
		return objs
	}
	var out []*metav1.PartialObjectMetadata
	for _, o := range objs {
		if sel.Matches(fields.Set{"metadata.name": o.Name, "metadata.namespace": o.Namespace}) {
			out = append(out, o)
		}
	}
	return out
}

func podTotals(pm *metrics.PodMetrics) (cpu, mem resource.Quantity) {
	for _, c := range pm.Containers {
		cpu.Add(c.Usage["cpu"])
		mem.Add(c.Usage["memory"])
	}
	return cpu, mem
}
