package localstack

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
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
