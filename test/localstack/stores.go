package localstack

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// VictoriaMetrics is a running VictoriaMetrics single-node server (bin/
// victoria-metrics, built from its module by 'make tools-stores').
type VictoriaMetrics struct {
	URL  string
	Proc *Process
}

// StartVictoriaMetrics starts VictoriaMetrics on 127.0.0.1 with a fresh
// store under dir/name and its default query limits (-search.maxQueryLen
// 16 KiB among them), and waits until it is healthy. Samples are visible
// to queries as soon as they are flushed (-search.latencyOffset=0s), and
// answers are not cached, so a test reads what it just wrote.
func StartVictoriaMetrics(ctx context.Context, g *Group, dir, name string, extraArgs ...string) (*VictoriaMetrics, error) {
	bin, err := Binary("victoria-metrics")
	if err != nil {
		return nil, err
	}
	port, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := append([]string{
		"-storageDataPath=" + filepath.Join(dir, name),
		"-httpListenAddr=" + addr,
		"-retentionPeriod=1d",
		"-search.latencyOffset=0s",
		"-search.disableCache",
		"-loggerLevel=WARN",
	}, extraArgs...)
	p, err := Start(dir, name, bin, args)
	if err != nil {
		return nil, err
	}
	g.Add(p)
	url := "http://" + addr
	if err := WaitHTTP(ctx, nil, url+"/health", 60*time.Second, p); err != nil {
		return nil, fmt.Errorf("VictoriaMetrics not ready: %w", err)
	}
	return &VictoriaMetrics{URL: url, Proc: p}, nil
}

// Import writes samples in the Prometheus text format (one
// `name{labels} value` per line, stamped now) and flushes them, so that
// they are queryable when it returns.
func (v *VictoriaMetrics) Import(ctx context.Context, text []byte) error {
	if err := post(ctx, v.URL+"/api/v1/import/prometheus", text); err != nil {
		return err
	}
	return post(ctx, v.URL+"/internal/force_flush", nil)
}

func post(ctx context.Context, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s: %s", url, resp.Status, b)
	}
	return nil
}

// Cortex is a running Cortex (bin/cortex, built from its module by 'make
// tools-stores') as one process: -target=all, blocks on the filesystem,
// in-memory rings, each request's tenant in X-Scope-OrgID (auth_enabled).
type Cortex struct {
	// URL is its HTTP address; its Prometheus API is under /prometheus,
	// its remote-write endpoint /api/v1/push.
	URL  string
	Proc *Process
}

// StartCortex starts Cortex on 127.0.0.1 (free HTTP and gRPC ports) with
// its files under dir/name, and waits until it is ready.
func StartCortex(ctx context.Context, g *Group, dir, name string) (*Cortex, error) {
	bin, err := Binary("cortex")
	if err != nil {
		return nil, err
	}
	httpPort, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	grpcPort, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	home := filepath.Join(dir, name)
	for _, d := range []string{"rules", "alerts", "rules-tmp"} {
		if err := os.MkdirAll(filepath.Join(home, d), 0o755); err != nil {
			return nil, err
		}
	}
	ring := "    kvstore: {store: inmemory}\n    instance_addr: 127.0.0.1\n"
	cfg := fmt.Sprintf(`auth_enabled: true
target: all
server:
  http_listen_address: 127.0.0.1
  http_listen_port: %d
  grpc_listen_address: 127.0.0.1
  grpc_listen_port: %d
  log_level: warn
distributor:
  shard_by_all_labels: true
  ring:
%s
ingester:
  lifecycler:
    address: 127.0.0.1
    min_ready_duration: 0s
    final_sleep: 0s
    num_tokens: 128
    ring:
      kvstore: {store: inmemory}
      replication_factor: 1
blocks_storage:
  backend: filesystem
  tsdb: {dir: %[4]s/tsdb}
  bucket_store: {sync_dir: %[4]s/tsdb-sync}
  filesystem: {dir: %[4]s/blocks}
compactor:
  data_dir: %[4]s/compactor
  sharding_ring:
%[3]s
store_gateway:
  sharding_ring:
%[3]s
querier:
  active_query_tracker_dir: %[4]s/active-query-tracker
frontend_worker:
  match_max_concurrent: true
ruler:
  rule_path: %[4]s/rules-tmp
  ring:
%[3]s
ruler_storage:
  backend: local
  local: {directory: %[4]s/rules}
alertmanager:
  external_url: http://127.0.0.1/alertmanager
  sharding_ring:
%[3]s
alertmanager_storage:
  backend: local
  local: {path: %[4]s/alerts}
`, httpPort, grpcPort, ring, home)
	file := filepath.Join(home, "cortex.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := Start(dir, name, bin, []string{"-config.file=" + file})
	if err != nil {
		return nil, err
	}
	g.Add(p)
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	if err := WaitHTTP(ctx, nil, url+"/ready", 2*time.Minute, p); err != nil {
		return nil, fmt.Errorf("cortex not ready: %w", err)
	}
	return &Cortex{URL: url, Proc: p}, nil
}

// PromLabelProxy is a running prom-label-proxy (bin/prom-label-proxy, built
// from its module by 'make tools-stores') in front of a Prometheus server:
// every query and series listing it passes on is pinned to the value of
// one label that the request's query parameter (named like the label)
// gives, as OpenShift runs it in front of its querier.
type PromLabelProxy struct {
	URL  string
	Proc *Process
}

// StartPromLabelProxy starts prom-label-proxy on 127.0.0.1 in front of
// upstream, enforcing label (taken from the query parameter of the same
// name; a query naming another value of it is refused, not rewritten), and
// waits until it passes a query on.
func StartPromLabelProxy(ctx context.Context, g *Group, dir, name, upstream, label string) (*PromLabelProxy, error) {
	bin, err := Binary("prom-label-proxy")
	if err != nil {
		return nil, err
	}
	port, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p, err := Start(dir, name, bin, []string{
		"-insecure-listen-address=" + addr,
		"-upstream=" + upstream,
		"-label=" + label,
		"-error-on-replace",
	})
	if err != nil {
		return nil, err
	}
	g.Add(p)
	url := "http://" + addr
	if err := WaitHTTP(ctx, nil, url+"/api/v1/query?query=vector(1)&"+label+"=probe", 60*time.Second, p); err != nil {
		return nil, fmt.Errorf("prom-label-proxy not ready: %w", err)
	}
	return &PromLabelProxy{URL: url, Proc: p}, nil
}
