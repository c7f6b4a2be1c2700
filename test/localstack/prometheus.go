package localstack

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Prometheus is a running Prometheus server.
type Prometheus struct {
	URL  string
	Proc *Process
	// readyClient checks readiness (after Restart too); nil is a plain
	// client.
	readyClient *http.Client
}

// PrometheusOptions change how StartPrometheusWith runs Prometheus. The
// zero value is what StartPrometheus does.
type PrometheusOptions struct {
	// Name names the process, its log and its folder under dir;
	// "prometheus" if empty. Servers sharing a dir need different names.
	Name string
	// Addr is the host:port to listen on; a free port on 127.0.0.1 if
	// empty. Set it when the configuration must name Prometheus' own
	// address (to scrape itself).
	Addr string
	// WebConfig, if set, is the text of Prometheus' web configuration
	// (--web.config.file: tls_server_config, basic_auth_users), written
	// next to prometheus.yml.
	WebConfig string
	// TLS says WebConfig serves HTTPS: the URL is https://.
	TLS bool
	// ReadyClient polls /-/ready; it must carry what WebConfig asks for
	// (the CA, a client certificate, basic auth). A plain client if nil.
	ReadyClient *http.Client
}

// StartPrometheus starts Prometheus on 127.0.0.1 with the given
// configuration (prometheus.yml text), a fresh TSDB under dir, and waits
// until it is ready.
func StartPrometheus(ctx context.Context, g *Group, dir, configYAML string) (*Prometheus, error) {
	return StartPrometheusWith(ctx, g, dir, configYAML, PrometheusOptions{})
}

// StartPrometheusWith is StartPrometheus with options: another name, a
// fixed address, a web configuration (TLS, client certificates, basic
// auth).
func StartPrometheusWith(ctx context.Context, g *Group, dir, configYAML string, opts PrometheusOptions) (*Prometheus, error) {
	bin, err := PrometheusBinary()
	if err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name = "prometheus"
	}
	pdir := filepath.Join(dir, name)
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
	addr := opts.Addr
	if addr == "" {
		port, err := FreePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	args := []string{
		"--config.file=" + cfg,
		"--storage.tsdb.path=" + filepath.Join(pdir, "data"),
		"--storage.tsdb.retention.time=2h",
		"--web.listen-address=" + addr,
		"--web.enable-lifecycle",
		"--log.level=warn",
	}
	if opts.WebConfig != "" {
		web := filepath.Join(pdir, "web.yml")
		if err := os.WriteFile(web, []byte(opts.WebConfig), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "--web.config.file="+web)
	}
	p, err := Start(dir, name, bin, args)
	if err != nil {
		return nil, err
	}
	g.Add(p)
	url := "http://" + addr
	if opts.TLS {
		url = "https://" + addr
	}
	if err := WaitHTTP(ctx, opts.ReadyClient, url+"/-/ready", 60*time.Second, p); err != nil {
		return nil, fmt.Errorf("Prometheus not ready: %w", err)
	}
	return &Prometheus{URL: url, Proc: p, readyClient: opts.ReadyClient}, nil
}

// Restart starts Prometheus again with the same flags, port and TSDB
// (after Proc was stopped or killed) and waits until it is ready.
func (p *Prometheus) Restart(ctx context.Context, g *Group) error {
	q, err := p.Proc.Restart(g)
	if err != nil {
		return err
	}
	p.Proc = q
	if err := WaitHTTP(ctx, p.readyClient, p.URL+"/-/ready", 60*time.Second, q); err != nil {
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
