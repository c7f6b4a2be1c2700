package localstack

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Prometheus is a running Prometheus server.
type Prometheus struct {
	URL  string
	Proc *Process
}

// StartPrometheus starts Prometheus on 127.0.0.1 with the given
// configuration (prometheus.yml text), a fresh TSDB under dir, and waits
// until it is ready.
func StartPrometheus(ctx context.Context, g *Group, dir, configYAML string) (*Prometheus, error) {
	bin, err := PrometheusBinary()
	if err != nil {
		return nil, err
	}
	pdir := filepath.Join(dir, "prometheus")
	if err := os.RemoveAll(pdir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(pdir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(configYAML), 0o644); err != nil {
		return nil, err
	}
	port, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p, err := Start(dir, "prometheus", bin, []string{
		"--config.file=" + cfg,
		"--storage.tsdb.path=" + filepath.Join(pdir, "data"),
		"--storage.tsdb.retention.time=2h",
		"--web.listen-address=" + addr,
		"--web.enable-lifecycle",
		"--log.level=warn",
	})
	if err != nil {
		return nil, err
	}
	g.Add(p)
	url := "http://" + addr
	if err := WaitHTTP(ctx, nil, url+"/-/ready", 60*time.Second, p); err != nil {
		return nil, fmt.Errorf("Prometheus not ready: %w", err)
	}
	return &Prometheus{URL: url, Proc: p}, nil
}

// Restart starts Prometheus again with the same flags, port and TSDB
// (after Proc was stopped or killed) and waits until it is ready.
func (p *Prometheus) Restart(ctx context.Context, g *Group) error {
	q, err := p.Proc.Restart(g)
	if err != nil {
		return err
	}
	p.Proc = q
	if err := WaitHTTP(ctx, nil, p.URL+"/-/ready", 60*time.Second, q); err != nil {
		return fmt.Errorf("Prometheus not ready after a restart: %w", err)
	}
	return nil
}

// App is a running load-app process.
type App struct {
	URL  string
	Proc *Process
}

// StartApp starts the load app (bin) on addr ("127.0.0.1:0" picks a port)
// and waits until it is ready.
func StartApp(ctx context.Context, g *Group, dir, name, bin, host string, extraArgs ...string) (*App, error) {
	port, err := FreePort(host)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	args := append([]string{"--listen-address=" + addr}, extraArgs...)
	p, err := Start(dir, name, bin, args)
	if err != nil {
		return nil, err
	}
	g.Add(p)
	url := "http://" + addr
	if err := WaitHTTP(ctx, nil, url+"/readyz", 30*time.Second, p); err != nil {
		return nil, err
	}
	return &App{URL: url, Proc: p}, nil
}
