// Package localstack starts and stops the real servers the integration
// tests, the end-to-end tests and the local demo run on 127.0.0.1:
// Prometheus, load-app processes, and (in cluster.go) etcd,
// kube-apiserver, kube-controller-manager and the adapter.
//
// Every process it starts writes its output to a file in a run folder, is
// stopped by PID (SIGTERM, then SIGKILL), and is never left behind by a
// Stack that was closed. It is test and demo tooling, not product code.
package localstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Process is a started server.
type Process struct {
	Name    string
	LogPath string
	dir     string
	bin     string
	args    []string
	env     []string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	logFile *os.File
}

// Start runs bin with args, logging to dir/name.log.
func Start(dir, name, bin string, args []string, env ...string) (*Process, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// A process group of its own, so Ctrl-C in a terminal reaches it only
	// through Stop, after the orchestrating process decided to stop.
	// Pdeathsig: if the orchestrating process dies without cleaning up
	// (a test timeout, SIGKILL), the servers it started die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	p := &Process{Name: name, LogPath: logPath, dir: dir, bin: bin, args: args, env: env, cmd: cmd, done: make(chan struct{}), logFile: f}
	go func() {
		p.err = cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	return p, nil
}

// PID returns the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It is safe to call
// more than once.
func (p *Process) Stop(grace time.Duration) error {
	if exited, _ := p.Exited(); exited {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s (pid %d) did not stop within %v of SIGTERM and was killed", p.Name, p.PID(), grace)
}

// Signal sends sig to the process (SIGSTOP and SIGCONT pause and resume
// it).
func (p *Process) Signal(sig syscall.Signal) error {
	if exited, _ := p.Exited(); exited {
		return fmt.Errorf("%s (pid %d) has exited", p.Name, p.PID())
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Process) Kill() {
	if exited, _ := p.Exited(); exited {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Restart starts the same command again, appending to the same log, once
// the process has ended (stop or kill it first). The new process takes
// its place in g.
func (p *Process) Restart(g *Group) (*Process, error) {
	if exited, _ := p.Exited(); !exited {
		return nil, fmt.Errorf("%s (pid %d) is still running", p.Name, p.PID())
	}
	q, err := Start(p.dir, p.Name, p.bin, p.args, p.env...)
	if err != nil {
		return nil, err
	}
	g.Replace(p, q)
	return q, nil
}

// Tail returns the last n lines of the process's log.
func (p *Process) Tail(n int) string { return tailFile(p.LogPath, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Group owns processes and stops them in reverse start order.
type Group struct {
	mu    sync.Mutex
	procs []*Process
}

// Add records p to be stopped by StopAll.
func (g *Group) Add(p *Process) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.procs = append(g.procs, p)
}

// Remove forgets p (after stopping it yourself).
func (g *Group) Remove(p *Process) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, q := range g.procs {
		if q == p {
			g.procs = append(g.procs[:i], g.procs[i+1:]...)
			return
		}
	}
}

// Replace puts q in p's place (or adds q when p is not owned).
func (g *Group) Replace(p, q *Process) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, r := range g.procs {
		if r == p {
			g.procs[i] = q
			return
		}
	}
	g.procs = append(g.procs, q)
}

// Find returns the owned process named name, or nil.
func (g *Group) Find(name string) *Process {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.procs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Processes returns the processes still owned.
func (g *Group) Processes() []*Process {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*Process(nil), g.procs...)
}

// StopAll stops every process, newest first.
func (g *Group) StopAll(grace time.Duration) error {
	g.mu.Lock()
	procs := g.procs
	g.procs = nil
	g.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(grace); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DumpLogs writes the tail of every process's log to w.
func (g *Group) DumpLogs(w io.Writer, lines int) {
	for _, p := range g.Processes() {
		fmt.Fprintf(w, "----- %s (%s), last %d lines -----\n%s\n", p.Name, p.LogPath, lines, p.Tail(lines))
	}
}

// FreePort returns a TCP port on host that was free a moment ago.
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitHTTP polls url until it answers 200 or ctx/timeout ends. p, if not
// nil, is checked for an early exit so failures are reported at once.
func WaitHTTP(ctx context.Context, client *http.Client, url string, timeout time.Duration, p *Process) error {
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	var last, exited error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if p != nil {
			if done, perr := p.Exited(); done {
				exited = fmt.Errorf("%s exited (%w) before %s answered; last log lines:\n%s", p.Name, perr, url, p.Tail(30))
				return false, exited
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			last = err
			return false, nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			last = fmt.Errorf("status %d", resp.StatusCode)
			return false, nil
		}
		return true, nil
	})
	if exited != nil {
		return exited
	}
	if err != nil && last != nil {
		return fmt.Errorf("waiting for %s: %w (last: %w)", url, err, last)
	}
	return err
}

// RepoRoot finds the repository root (the directory holding go.mod and
// Makefile) from the working directory upwards.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "Makefile")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root not found above the working directory")
		}
		dir = parent
	}
}

// FreshRunDir empties dir, or run/<name> in the repository when dir is
// empty, for a command's run folder (logs, certificates, kubeconfigs), and
// returns it.
func FreshRunDir(dir, name string) (string, error) {
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "run", name)
	}
	return dir, os.RemoveAll(dir)
}

// Binary returns the path of bin/<name> in the repository, or an error
// telling how to build it.
func Binary(name string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "bin", name)
	if _, err := os.Stat(p); err != nil {
		target := "tools"
		switch name {
		case "victoria-metrics", "cortex", "prom-label-proxy":
			target = "tools-stores"
		case "promtool":
			target = "repo"
		}
		return "", fmt.Errorf("%s not found: run 'make %s' first", p, target)
	}
	return p, nil
}

// PrometheusBinary finds Prometheus: $PROMETHEUS, else bin/prometheus
// (built by 'make tools' with Kubernetes service discovery, which Debian's
// package lacks).
func PrometheusBinary() (string, error) {
	if p := os.Getenv("PROMETHEUS"); p != "" {
		return p, nil
	}
	return Binary("prometheus")
}

// KubectlBinary finds kubectl: on the PATH, else bin/kubectl (which 'make
// kubectl' builds when the PATH has none).
func KubectlBinary() (string, error) {
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p, nil
	}
	if p, err := Binary("kubectl"); err == nil {
		return p, nil
	}
	return "", errors.New("kubectl not found on the PATH or in bin/: run 'make kubectl'")
}

// Build compiles a main package of this repository (e.g. "./app") into
// dir with the flags the Makefile uses, so the build cache is shared.
func Build(ctx context.Context, dir, pkg, name string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// RequireEnv is the environment variable the Makefile sets so that a test
// that needs servers fails, rather than skips, when they are missing.
const RequireEnv = "LOCALSTACK_REQUIRED"

// MissingServers returns, when one of the servers the local stack runs is
// not built, why and what to run; "" when all are there. Tests skip with it
// under a plain `go test ./...` on a fresh clone, and fail with it when
// RequireEnv is set (make test, make e2e).
func MissingServers(names ...string) string {
	for _, n := range names {
		var err error
		switch n {
		case "prometheus":
			_, err = PrometheusBinary()
		case "kubectl":
			_, err = KubectlBinary()
		default:
			_, err = Binary(n)
		}
		if err != nil {
			return err.Error()
		}
	}
	return ""
}
