package localstack

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Suite runs a test package's tests on one local stack.
type Suite struct {
	// Name names the run folder, _output/<Name>-<time>.
	Name string
	// Options configure the stack; Dir and Progress are set by Run.
	Options StackOptions
	// Setup, if set, runs once the stack is up and before the tests (it
	// keeps the stack for them); its cleanup runs after them.
	Setup func(ctx context.Context, s *Stack) (cleanup func(), err error)
	// Timeout bounds the start and Setup; 5 minutes if zero.
	Timeout time.Duration
	// TestTimeout and Parallel are the suite's own -timeout and
	// -parallel, for a plain `go test ./...` (the Makefile's targets
	// pass the same): its tests wait on HPAs, not on the CPU, so they run
	// side by side, and the whole takes longer than go test's 10 minutes
	// would allow one at a time. Flags given on the command line win.
	TestTimeout time.Duration
	Parallel    int
}

// Run is a TestMain: it skips the tests (or fails them, with RequireEnv
// set) when servers are not built, takes the machine-wide lock
// (LockMachine: one suite's servers at a time), starts the stack, runs Setup and the
// tests, writes the servers' last log lines when something failed, stops
// everything, and keeps the run folder of failed runs only.
func (su Suite) Run(m *testing.M) (code int) {
	servers := []string{"etcd", "kube-apiserver", "kube-controller-manager", "prometheus", "kubectl"}
	if len(su.Options.CortexTenants) > 0 {
		servers = append(servers, "cortex")
	}
	if why := MissingServers(servers...); why != "" {
		if os.Getenv(RequireEnv) != "" {
			fmt.Fprintf(os.Stderr, "%s: %s\n", su.Name, why)
			return 1
		}
		fmt.Fprintf(os.Stderr, "%s: skipped: %s\nRun 'make %s' (or 'make test'), which builds the servers first.\n", su.Name, why, su.Name)
		return 0
	}
	root, err := RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := su.testFlags(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	unlock, err := LockMachine(su.Name, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer unlock()
	timeout := su.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	opts := su.Options
	opts.Dir = filepath.Join(root, "_output", su.Name+"-"+time.Now().Format("20060102-150405"))
	opts.Progress = os.Stderr
	start := time.Now()
	stack, err := StartStack(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the local stack:", err)
		return 1
	}
	code = 1
	defer func() {
		if code != 0 {
			stack.Procs.DumpLogs(os.Stderr, 60)
		}
		if err := stack.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the local stack:", err)
			code = 1
		}
		if code == 0 {
			_ = os.RemoveAll(opts.Dir)
		}
	}()
	if su.Setup != nil {
		cleanup, err := su.Setup(ctx, stack)
		if err != nil {
			fmt.Fprintln(os.Stderr, "setting up:", err)
			return 1
		}
		if cleanup != nil {
			defer cleanup()
		}
	}
	fmt.Fprintf(os.Stderr, "local stack up in %s; logs in %s\n", time.Since(start).Round(100*time.Millisecond), opts.Dir)
	return m.Run()
}

// testFlags sets -test.timeout and -test.parallel to the suite's, unless
// the command line gives them: go test's alarm starts in m.Run, after. go
// test passes its default -timeout (10m) to every test binary, so a
// timeout of exactly 10m counts as not given.
func (su Suite) testFlags() error {
	if !flag.Parsed() {
		flag.Parse()
	}
	given := map[string]bool{}
	flag.Visit(func(f *flag.Flag) {
		given[f.Name] = f.Name != "test.timeout" || f.Value.String() != (10*time.Minute).String()
	})
	for name, value := range map[string]string{
		"test.timeout":  durationOrEmpty(su.TestTimeout),
		"test.parallel": intOrEmpty(su.Parallel),
	} {
		if value == "" || given[name] {
			continue
		}
		if err := flag.Set(name, value); err != nil {
			return fmt.Errorf("%s: setting -%s=%s: %w", su.Name, name, value, err)
		}
	}
	return nil
}

func durationOrEmpty(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.String()
}

func intOrEmpty(n int) string {
	if n <= 0 {
		return ""
	}
	return strconv.Itoa(n)
}
