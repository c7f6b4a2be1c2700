package localstack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// UpstreamRules is the rules file of the prometheus-adapter the stack runs
// as the adapter's upstream.
const UpstreamRules = "test/localstack/testdata/prometheus-adapter-rules.yaml"

// UpstreamName names it in the adapter's upstreams file.
const UpstreamName = "prometheus-adapter"

// ForwardingUser is the common name of the adapter's forwarding
// certificate (Stack.Forwarding): the one name prometheus-adapter takes
// X-Remote-* headers from.
const ForwardingUser = "forwarding-client"

// Upstream is a real prometheus-adapter (bin/prometheus-adapter, built
// from its pinned module) behind the stack's adapter: what the adapter's
// rules do not serve, it forwards there (--upstreams), as during a
// migration from prometheus-adapter.
type Upstream struct {
	*Process
	URL  string
	args []string
	bin  string
}

// startUpstream starts prometheus-adapter with its own rules, serving on
// 127.0.0.1 with the stack's serving certificate, and writes the adapter's
// upstreams file; it returns the file's path.
func (s *Stack) startUpstream(ctx context.Context, dir string) (string, error) {
	bin, err := Binary("prometheus-adapter")
	if err != nil {
		return "", err
	}
	port, err := FreePort("127.0.0.1")
	if err != nil {
		return "", err
	}
	// The adapter forwards with a certificate of a CA of its own, which
	// prometheus-adapter trusts as its requestheader (front-proxy) CA and
	// the API server does not (hack/gen-forwarding-cert.sh, in a cluster).
	fwd, err := GenerateTLSFiles(s.PKI.Dir, "forwarding")
	if err != nil {
		return "", err
	}
	s.Forwarding = fwd
	u := &Upstream{URL: "https://127.0.0.1:" + strconv.Itoa(port), bin: bin, args: []string{
		"--secure-port=" + strconv.Itoa(port), "--bind-address=127.0.0.1",
		"--tls-cert-file=" + s.PKI.Path("adapter-serving.crt"), "--tls-private-key-file=" + s.PKI.Path("adapter-serving.key"),
		"--lister-kubeconfig=" + s.AdminKubeconfig,
		"--authentication-kubeconfig=" + s.AdminKubeconfig, "--authorization-kubeconfig=" + s.AdminKubeconfig,
		"--requestheader-client-ca-file=" + fwd.CA, "--requestheader-allowed-names=" + ForwardingUser,
		"--prometheus-url=" + s.Prometheus.URL,
		"--config=" + filepath.Join(s.Root, UpstreamRules),
		"--metrics-relist-interval=10s",
		"--v=2",
	}}
	s.Upstream = u
	if err := s.StartUpstream(ctx); err != nil {
		return "", err
	}
	file := filepath.Join(dir, "upstreams.yaml")
	text := fmt.Sprintf("upstreams:\n- name: %s\n  groups: [custom.metrics.k8s.io, external.metrics.k8s.io]\n  url: %s\n  caFile: %s\n  clientCertFile: %s\n  clientKeyFile: %s\n",
		UpstreamName, u.URL, s.PKI.Path("ca.crt"), fwd.ClientCert, fwd.ClientKey)
	return file, os.WriteFile(file, []byte(text), 0o600)
}

// StartUpstream starts the upstream prometheus-adapter (again, after
// StopUpstream) and waits until it is ready.
func (s *Stack) StartUpstream(ctx context.Context) error {
	u := s.Upstream
	p, err := Start(s.Dir, UpstreamName, u.bin, u.args)
	if err != nil {
		return err
	}
	s.Procs.Add(p)
	u.Process = p
	client, err := s.HTTPClient("admin")
	if err != nil {
		return err
	}
	if err := WaitHTTP(ctx, client, u.URL+"/readyz", 90*time.Second, p); err != nil {
		return fmt.Errorf("prometheus-adapter: %w", err)
	}
	return nil
}

// StopUpstream stops the upstream prometheus-adapter.
func (s *Stack) StopUpstream() error {
	s.Procs.Remove(s.Upstream.Process)
	return s.Upstream.Stop(10 * time.Second)
}
