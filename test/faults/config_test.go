package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadConfigsExitNamingTheMistake starts the adapter binary on rules
// files with each kind of mistake: it must exit non-zero, before serving,
// naming the file, the line, the rule and the field of every mistake.
func TestBadConfigsExitNamingTheMistake(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, yaml string
		// missing leaves the file out.
		missing bool
		// want must all appear in stderr; "FILE" stands for the path.
		want []string
	}{
		{
			name: "a misspelt field",
			yaml: "rules:\n- seriesQuery: app_requests_total\n  metricQuery: sum(<<.Series>>)\n",
			want: []string{"FILE:3: rules[0].metricQuery: unknown field", `did you mean "metricsQuery"`},
		},
		{
			name: "a mistake in each of two rules",
			yaml: "rules:\n- seriesQuery: a\n  metricsQuery: sum(<<.Series>>)\n  name: {matches: \"(\"}\n" +
				"- seriesQuery: b\n  metricsQuery: sum(<<.Serie>>)\n",
			want: []string{"FILE:4: rules[0].name.matches: invalid regular expression", "FILE:6: rules[1].metricsQuery: template cannot be rendered"},
		},
		{
			name: "YAML that does not parse",
			yaml: "rules:\n- seriesQuery: [a\n",
			want: []string{"FILE: yaml: line "},
		},
		{
			name: "an external rule that cannot tell namespaces",
			yaml: "externalRules:\n- seriesQuery: a\n  metricsQuery: sum(<<.Series>>)\n",
			want: []string{"FILE:2: externalRules[0].resources", "namespaced: false"},
		},
		{
			name: "resource rules without memory",
			yaml: "resourceRules:\n  cpu:\n    containerQuery: sum(rate(c[1m]))\n    nodeQuery: sum(rate(n[1m]))\n" +
				"    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}, node: {resource: node}}}\n    containerLabel: container\n",
			want: []string{"FILE:1: resourceRules.memory: is required"},
		},
		{
			name: "an empty file",
			yaml: "",
			want: []string{"FILE: the file is empty"},
		},
		{
			name: "rules with nothing to serve",
			yaml: "rules: []\n",
			want: []string{"FILE: no rules, externalRules or resourceRules"},
		},
		{
			name:    "a file that is not there",
			missing: true,
			want:    []string{"FILE: no such file"},
		},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("rules-%d.yaml", i))
			if !tc.missing {
				if err := os.WriteFile(path, []byte(tc.yaml), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Everything else as for a real start: the adapter must fail
			// on the rules before it reaches for the cluster.
			cmd := exec.CommandContext(ctx, stack.AdapterBinary, "--config="+path, "--prometheus-url="+stack.Prometheus.URL,
				"--secure-port=0", "--lister-kubeconfig="+stack.AdminKubeconfig)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 || ctx.Err() != nil {
				t.Fatalf("want a non-zero exit, got %v (context %v); stderr:\n%s", err, ctx.Err(), stderr.String())
			}
			out := stderr.String()
			for _, w := range tc.want {
				if w = strings.ReplaceAll(w, "FILE", path); !strings.Contains(out, w) {
					t.Errorf("stderr does not say %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Errorf("the adapter panicked:\n%s", out)
			}
		})
	}
}
