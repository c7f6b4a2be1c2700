// Package repo checks the repository as a whole: every manifest is
// rendered by a kustomization and each kustomization renders, the rules the
// manifests ship are the built-in ones, every shell script passes
// shellcheck, each Dockerfile's build stage builds here with plain go, the
// generated OpenAPI definitions are current, the Helm chart lints and
// renders what the kustomizations do (helm_test.go), and no Go code takes a
// literal date for "now" nor is any certificate committed (dates_test.go),
// and every package's doc names what it holds (docs_test.go).
// Applying the manifests to a real API server is in test/e2e.
package repo

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// requireOrSkip fails the test for a missing tool under make (which
// installs it), and skips it under a plain go test.
func requireOrSkip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv(localstack.RequireEnv) != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func root(t *testing.T) string {
	t.Helper()
	r, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// kustomizations returns the directories under manifests/ that hold a
// kustomization.yaml, relative to the repository root.
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(filepath.Join(root(t), "manifests"), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "kustomization.yaml" {
			rel, err := filepath.Rel(root(t), filepath.Dir(path))
			if err != nil {
				return err
			}
			dirs = append(dirs, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 5 {
		t.Fatalf("found %d kustomizations under manifests/: %v", len(dirs), dirs)
	}
	return dirs
}

type kustomization struct {
	Resources          []string                `json:"resources"`
	Components         []string                `json:"components"`
	Patches            []struct{ Path string } `json:"patches"`
	ConfigMapGenerator []struct {
		Files []string `json:"files"`
	} `json:"configMapGenerator"`
}

func TestEveryManifestIsInAKustomization(t *testing.T) {
	r := root(t)
	referenced := map[string]bool{}
	for _, dir := range kustomizations(t) {
		raw, err := os.ReadFile(filepath.Join(r, dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k kustomization
		if err := yaml.Unmarshal(raw, &k); err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
		refs := append(append([]string{}, k.Resources...), k.Components...)
		for _, p := range k.Patches {
			refs = append(refs, p.Path)
		}
		for _, g := range k.ConfigMapGenerator {
			for _, f := range g.Files {
				if _, file, ok := strings.Cut(f, "="); ok {
					f = file
				}
				refs = append(refs, f)
			}
		}
		for _, ref := range refs {
			referenced[filepath.Join(dir, ref)] = true
		}
	}
	var files int
	err := filepath.WalkDir(filepath.Join(r, "manifests"), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == filepath.Join(r, "manifests", "helm") {
				return filepath.SkipDir // charts: helm_test.go renders and checks them
			}
			return nil
		}
		ext := filepath.Ext(path)
		if (ext != ".yaml" && ext != ".yml") || d.Name() == "kustomization.yaml" {
			return nil
		}
		rel, err := filepath.Rel(r, path)
		if err != nil {
			return err
		}
		if promRulesFile(t, path) {
			return nil // a Prometheus rules file or its tests: monitoring_test.go checks them
		}
		files++
		if !referenced[rel] {
			t.Errorf("%s is in no kustomization: add it to one (resources, patches or configMapGenerator)", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 15 {
		t.Errorf("checked only %d manifest files", files)
	}
}

// promRulesFile says whether path is a Prometheus rules file (groups:) or
// a promtool test file (rule_files:) rather than a Kubernetes object.
func promRulesFile(t *testing.T, path string) bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := yaml.Unmarshal(raw, &top); err != nil {
		return false
	}
	_, kind := top["kind"]
	_, groups := top["groups"]
	_, tests := top["rule_files"]
	return !kind && (groups || tests)
}

func TestEveryKustomizationRenders(t *testing.T) {
	kubectl, err := localstack.KubectlBinary()
	if err != nil {
		requireOrSkip(t, err.Error())
	}
	for _, dir := range kustomizations(t) {
		t.Run(dir, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, kubectl, "kustomize", dir)
			cmd.Dir = root(t)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
			}
			objs, err := localstack.SplitYAML(out)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) == 0 {
				t.Fatalf("%s renders nothing", dir)
			}
			for _, o := range objs {
				if o.GetKind() == "" || o.GetAPIVersion() == "" || o.GetName() == "" {
					t.Errorf("%s renders an object without kind, apiVersion or name: %v", dir, o.Object)
				}
			}
		})
	}
}

func TestShippedRulesAreTheBuiltInRules(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join(root(t), "manifests/adapter/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(shipped, config.DefaultYAML()) {
		t.Error("manifests/adapter/config.yaml differs from pkg/config/default.yaml: copy one onto the other")
	}
}

func TestAPIServicesNeverSkipTLSVerification(t *testing.T) {
	err := filepath.WalkDir(filepath.Join(root(t), "manifests"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("insecureSkipTLSVerify: true")) {
			t.Errorf("%s sets insecureSkipTLSVerify: true", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// scripts lists the shell scripts in the repository: *.sh and files with a
// shell shebang.
func scripts(t *testing.T) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	var found []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := sc.Text()
		if strings.HasSuffix(f, ".sh") {
			found = append(found, f)
			continue
		}
		if filepath.Ext(f) != "" {
			continue
		}
		head, err := os.ReadFile(filepath.Join(root(t), f))
		if err == nil && bytes.HasPrefix(head, []byte("#!")) && bytes.Contains(bytes.SplitN(head, []byte("\n"), 2)[0], []byte("sh")) {
			found = append(found, f)
		}
	}
	return found
}

func TestShellScriptsPassShellcheck(t *testing.T) {
	if _, err := exec.LookPath("shellcheck"); err != nil {
		requireOrSkip(t, "shellcheck not on the PATH: run 'make repo' (it installs Debian's shellcheck) or install it")
	}
	files := scripts(t)
	for _, want := range []string{".ci/run", "hack/build.sh"} {
		if !slices.Contains(files, want) {
			t.Errorf("script list %v lacks %s", files, want)
		}
	}
	cmd := exec.Command("shellcheck", append([]string{"--severity=style", "--external-sources"}, files...)...)
	cmd.Dir = root(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("shellcheck %s: %v\n%s", strings.Join(files, " "), err, out)
	}
}

// dockerfile is the part of a Dockerfile this test replays.
type dockerfile struct {
	args        map[string]string
	buildCopies [][2]string // source, destination in the build stage
	buildRuns   []string
	finalFrom   string
	user        string
	entrypoint  string
	finalCopies []string // sources copied from the build stage
}

func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines.
	text := regexp.MustCompile(`\\\n\s*`).ReplaceAllString(string(raw), " ")
	d := dockerfile{args: map[string]string{}}
	stage := 0
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			stage++
			if stage == 2 {
				d.finalFrom = rest
			}
		case "ARG":
			name, def, _ := strings.Cut(rest, "=")
			d.args[name] = def
		case "COPY":
			f := strings.Fields(rest)
			if stage == 1 {
				for _, src := range f[:len(f)-1] {
					d.buildCopies = append(d.buildCopies, [2]string{src, f[len(f)-1]})
				}
			} else if strings.HasPrefix(f[0], "--from=") {
				d.finalCopies = append(d.finalCopies, f[1])
			}
		case "RUN":
			if stage == 1 {
				d.buildRuns = append(d.buildRuns, rest)
			}
		case "USER":
			d.user = rest
		case "ENTRYPOINT":
			d.entrypoint = rest
		}
	}
	return d
}

// TestDockerfilesBuildHere replays each Dockerfile's build stage in a copy
// of the files it COPYs, with plain go (there is no Docker engine here), and
// checks the final stage ships those binaries as nonroot on distroless.
func TestDockerfilesBuildHere(t *testing.T) {
	r := root(t)
	for _, tc := range []struct {
		file string
		want []string
	}{
		{file: "Dockerfile.adapter", want: []string{"adapter"}},
		{file: "Dockerfile.app", want: []string{"app", "loadgen"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			d := parseDockerfile(t, filepath.Join(r, tc.file))
			if !strings.HasPrefix(d.finalFrom, "gcr.io/distroless/static") || !strings.Contains(d.finalFrom, "nonroot") {
				t.Errorf("final image %q is not distroless static nonroot", d.finalFrom)
			}
			if d.user != "65532:65532" {
				t.Errorf("USER %q, want 65532:65532 (the manifests' runAsUser)", d.user)
			}
			ctx := t.TempDir()
			src := filepath.Join(ctx, "src")
			out := filepath.Join(ctx, "out")
			for _, c := range d.buildCopies {
				dst := filepath.Join(src, c[1])
				if strings.HasSuffix(c[1], "/") {
					if info, err := os.Stat(filepath.Join(r, c[0])); err == nil && !info.IsDir() {
						// COPY file dir/ puts the file into dir.
						dst = filepath.Join(dst, filepath.Base(c[0]))
					}
				}
				if err := copyPath(filepath.Join(r, c[0]), dst); err != nil {
					t.Fatalf("COPY %s %s: %v", c[0], c[1], err)
				}
			}
			for _, run := range d.buildRuns {
				if strings.HasPrefix(run, "go mod download") {
					continue // the module cache already has them
				}
				cmd := exec.Command("bash", "-euo", "pipefail", "-c", strings.ReplaceAll(run, "/out", out))
				cmd.Dir = src
				cmd.Env = os.Environ()
				for k, v := range d.args {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
				if b, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("RUN %s: %v\n%s", run, err, b)
				}
			}
			for _, bin := range tc.want {
				if _, err := os.Stat(filepath.Join(out, bin)); err != nil {
					t.Errorf("the build stage did not produce /out/%s: %v", bin, err)
				}
				if !slices.Contains(d.finalCopies, "/out/"+bin) {
					t.Errorf("the final stage does not copy /out/%s", bin)
				}
			}
			if !strings.Contains(d.entrypoint, `"/`+tc.want[0]+`"`) {
				t.Errorf("ENTRYPOINT %s does not run /%s", d.entrypoint, tc.want[0])
			}
		})
	}
}

func copyPath(src, dst string) error {
	info, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !info.IsDir() {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, info.Mode())
	}
	return filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		return copyPath(path, filepath.Join(dst, rel))
	})
}

// TestGeneratedOpenAPIIsCurrent regenerates the OpenAPI definitions of the
// resource metrics API into a temporary folder with the pinned openapi-gen
// and compares them with the committed file.
func TestGeneratedOpenAPIIsCurrent(t *testing.T) {
	r := root(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(r, "hack/openapi-gen.sh"), dir)
	cmd.Dir = r
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/openapi-gen.sh: %v\n%s", err, out)
	}
	const file = "zz_generated.openapi.go"
	want, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(r, "pkg/resourcemetrics/openapi", file))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("pkg/resourcemetrics/openapi/%s is not what hack/openapi-gen.sh generates: run make generate", file)
	}
}

// TestLocalResourceRulesAreValid loads the local stack's resource rules
// (hack/local/resource-rules.yaml) as the adapter would.
func TestLocalResourceRulesAreValid(t *testing.T) {
	path := filepath.Join(root(t), localstack.LocalResourceRules)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ResourceRules == nil || len(cfg.Rules) != 0 || len(cfg.ExternalRules) != 0 {
		t.Errorf("%s: want resourceRules only; got %d rules, %d externalRules, resourceRules %v",
			path, len(cfg.Rules), len(cfg.ExternalRules), cfg.ResourceRules != nil)
	}
}
