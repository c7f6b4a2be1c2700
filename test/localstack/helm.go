package localstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The Helm chart and how the tests render it.
const (
	// ChartDir is the chart, relative to the repository root.
	ChartDir = "manifests/helm/custom-metrics-adapter"
	// ChartPrometheusAdapterValues is a values file written as for
	// prometheus-adapter's chart (no built-in rules; custom, external and
	// resource rules; all three APIs routed to the adapter).
	ChartPrometheusAdapterValues = ChartDir + "/ci/prometheus-adapter-values.yaml"
	// ChartEveryAPIValues routes all three metrics APIs to the adapter and
	// takes the serving certificate from cert-manager.
	ChartEveryAPIValues = ChartDir + "/ci/every-api-values.yaml"
	// ChartRelease and ChartNamespace are the release name and namespace
	// the chart is rendered with: the namespace manifests/adapter uses.
	ChartRelease   = "custom-metrics-adapter"
	ChartNamespace = "custom-metrics"
)

// HelmBinary finds bin/helm, which 'make tools' and 'make repo' build from
// the pinned module in hack/tools/helm.
func HelmBinary() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "bin", "helm")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found: run 'make tools' (or 'make repo') first", p)
	}
	return p, nil
}

// Helm runs bin/helm with args in the repository root root and returns its
// standard output; on failure the error holds its standard error.
func Helm(ctx context.Context, root string, args ...string) ([]byte, error) {
	bin, err := HelmBinary()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// HelmTemplate renders the chart (`helm template`) as release ChartRelease
// in ChartNamespace with extra arguments (--set, -f, ...).
func HelmTemplate(ctx context.Context, root string, args ...string) ([]byte, error) {
	return Helm(ctx, root, append([]string{"template", ChartRelease, ChartDir, "--namespace", ChartNamespace}, args...)...)
}

// RenderChart renders the chart with the given values files (relative to
// root, or absolute; none: the chart's defaults) and returns the YAML
// stream, for SplitYAML or kubectl apply.
func RenderChart(root string, valuesFiles ...string) ([]byte, error) {
	if root == "" {
		return nil, errors.New("RenderChart: no repository root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var args []string
	for _, f := range valuesFiles {
		args = append(args, "--values", f)
	}
	return HelmTemplate(ctx, root, args...)
}
