package localstack

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ClusterOptions configure the control plane.
type ClusterOptions struct {
	// Dir is the run folder: PKI, kubeconfigs, etcd data and logs go here.
	Dir string
	// HPASyncPeriod is --horizontal-pod-autoscaler-sync-period.
	HPASyncPeriod time.Duration
	// DownscaleStabilization is
	// --horizontal-pod-autoscaler-downscale-stabilization.
	DownscaleStabilization time.Duration
	// Progress receives one line per step; nil discards.
	Progress io.Writer
	// Controllers are kube-controller-manager's --controllers; nil runs
	// DefaultControllers.
	Controllers []string
	// ControllerManagerArgs are extra kube-controller-manager flags
	// (--kube-api-qps=..., for benchmarks).
	ControllerManagerArgs []string
}

// DefaultControllers are the controllers the HPA demo needs.
var DefaultControllers = []string{
	"horizontal-pod-autoscaler-controller", "deployment-controller", "replicaset-controller",
	"serviceaccount-controller", "serviceaccount-token-controller", "namespace-controller", "garbage-collector-controller",
	// The admin, edit and view roles take in the ClusterRoles labelled
	// to aggregate to them (manifests/metric-rules).
	"clusterrole-aggregation-controller",
}

// Cluster is a running etcd, kube-apiserver and kube-controller-manager.
type Cluster struct {
	Dir       string
	PKI       PKI
	ServerURL string
	// AdminKubeconfig is a kubeconfig for system:masters.
	AdminKubeconfig string
	Admin           *rest.Config
	Client          kubernetes.Interface
	Procs           *Group
	// ControllerManagerURL is kube-controller-manager's secure port
	// (https://127.0.0.1:PORT), whose /metrics the admin credentials read.
	ControllerManagerURL string
	progress             io.Writer
	started              time.Time
}

// StartCluster generates PKI and starts etcd, kube-apiserver (with the
// aggregation layer and RBAC) and kube-controller-manager (HPA, deployment,
// replicaset, serviceaccount, namespace and garbage-collector controllers)
// on 127.0.0.1, and waits until they are healthy. On error everything
// started is stopped.
func StartCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	if opts.HPASyncPeriod == 0 {
		opts.HPASyncPeriod = 5 * time.Second
	}
	if opts.DownscaleStabilization == 0 {
		opts.DownscaleStabilization = 30 * time.Second
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.Controllers == nil {
		opts.Controllers = DefaultControllers
	}
	etcdBin, err := Binary("etcd")
	if err != nil {
		return nil, err
	}
	apiBin, err := Binary("kube-apiserver")
	if err != nil {
		return nil, err
	}
	kcmBin, err := Binary("kube-controller-manager")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: opts.Dir, Procs: &Group{}, progress: opts.Progress, started: time.Now()}
	ok := false
	defer func() {
		if !ok {
			c.Procs.DumpLogs(opts.Progress, 30)
			_ = c.Procs.StopAll(10 * time.Second)
		}
	}()
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	if c.PKI, err = GeneratePKI(filepath.Join(opts.Dir, "pki")); err != nil {
		return nil, fmt.Errorf("generating PKI: %w", err)
	}
	c.step("PKI generated in %s", c.PKI.Dir)

	// etcd
	clientPort, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	peerPort, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	dataDir := filepath.Join(opts.Dir, "etcd-data")
	if err := os.RemoveAll(dataDir); err != nil {
		return nil, err
	}
	etcd, err := Start(opts.Dir, "etcd", etcdBin, []string{
		"--name=local", "--data-dir=" + dataDir,
		"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=local=" + peerURL, "--initial-cluster-state=new",
		"--listen-metrics-urls=", "--logger=zap", "--log-level=warn", "--unsafe-no-fsync=true",
	})
	if err != nil {
		return nil, err
	}
	c.Procs.Add(etcd)
	if err := WaitHTTP(ctx, nil, etcdURL+"/health", 30*time.Second, etcd); err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	c.step("etcd ready on %s", etcdURL)

	// kube-apiserver
	apiPort, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	c.ServerURL = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	p := c.PKI.Path
	api, err := Start(opts.Dir, "kube-apiserver", apiBin, []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(apiPort), "--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--tls-cert-file=" + p("apiserver.crt"), "--tls-private-key-file=" + p("apiserver.key"),
		"--client-ca-file=" + p("ca.crt"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p("sa.pub"), "--service-account-signing-key-file=" + p("sa.key"),
		"--requestheader-client-ca-file=" + p("front-proxy-ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p("front-proxy-client.crt"), "--proxy-client-key-file=" + p("front-proxy-client.key"),
		"--enable-aggregator-routing=true",
		"--kubelet-client-certificate=" + p("apiserver-kubelet-client.crt"), "--kubelet-client-key=" + p("apiserver-kubelet-client.key"),
		// New Nodes would get the not-ready taint and, without a node
		// lifecycle controller, keep it.
		"--disable-admission-plugins=TaintNodesByCondition",
		"--allow-privileged=true", "--profiling=false", "--v=1",
	})
	if err != nil {
		return nil, err
	}
	c.Procs.Add(api)
	c.AdminKubeconfig = filepath.Join(opts.Dir, "admin.kubeconfig")
	if err := c.WriteKubeconfig(c.AdminKubeconfig, "admin"); err != nil {
		return nil, err
	}
	if c.Admin, err = clientcmd.BuildConfigFromFlags("", c.AdminKubeconfig); err != nil {
		return nil, err
	}
	c.Admin.QPS, c.Admin.Burst = 50, 100
	if c.Client, err = kubernetes.NewForConfig(c.Admin); err != nil {
		return nil, err
	}
	adminHTTP, err := c.HTTPClient("admin")
	if err != nil {
		return nil, err
	}
	if err := WaitHTTP(ctx, adminHTTP, c.ServerURL+"/readyz", 90*time.Second, api); err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	c.step("kube-apiserver ready on %s", c.ServerURL)

	// kube-controller-manager
	kcmKubeconfig := filepath.Join(opts.Dir, "kube-controller-manager.kubeconfig")
	if err := c.WriteKubeconfig(kcmKubeconfig, "kube-controller-manager"); err != nil {
		return nil, err
	}
	kcmPort, err := FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	kcm, err := Start(opts.Dir, "kube-controller-manager", kcmBin, append([]string{
		"--kubeconfig=" + kcmKubeconfig,
		"--authentication-kubeconfig=" + kcmKubeconfig, "--authorization-kubeconfig=" + kcmKubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(kcmPort), "--leader-elect=false",
		"--controllers=" + strings.Join(opts.Controllers, ","),
		"--horizontal-pod-autoscaler-sync-period=" + opts.HPASyncPeriod.String(),
		"--horizontal-pod-autoscaler-downscale-stabilization=" + opts.DownscaleStabilization.String(),
		"--root-ca-file=" + p("ca.crt"), "--service-account-private-key-file=" + p("sa.key"),
		// Without it every controller acts as system:kube-controller-manager,
		// which RBAC does not let read deployments/scale.
		"--use-service-account-credentials=true",
		"--v=2",
	}, opts.ControllerManagerArgs...))
	if err != nil {
		return nil, err
	}
	c.Procs.Add(kcm)
	insecure := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if err := WaitHTTP(ctx, insecure, "https://127.0.0.1:"+strconv.Itoa(kcmPort)+"/healthz", 60*time.Second, kcm); err != nil {
		return nil, fmt.Errorf("kube-controller-manager: %w", err)
	}
	c.ControllerManagerURL = "https://127.0.0.1:" + strconv.Itoa(kcmPort)
	c.step("kube-controller-manager healthy")
	ok = true
	return c, nil
}

func (c *Cluster) step(format string, args ...any) {
	fmt.Fprintf(c.progress, "[%6.1fs] %s\n", time.Since(c.started).Seconds(), fmt.Sprintf(format, args...))
}

// Stop stops every process of the cluster (and anything added to Procs).
func (c *Cluster) Stop() error { return c.Procs.StopAll(30 * time.Second) }

// RestartAPIServer kills kube-apiserver (SIGKILL, as a crash or the loss
// of its node would), starts it again with the same flags, port and etcd,
// and waits until it is ready. It returns how long the API server was
// down. (A SIGTERM would do too, but with clients holding watches open the
// API server takes its full shutdown timeout, a minute, to exit.)
func (c *Cluster) RestartAPIServer(ctx context.Context) (time.Duration, error) {
	api := c.Procs.Find("kube-apiserver")
	if api == nil {
		return 0, errors.New("no kube-apiserver process")
	}
	down := time.Now()
	api.Kill()
	api, err := api.Restart(c.Procs)
	if err != nil {
		return 0, err
	}
	adminHTTP, err := c.HTTPClient("admin")
	if err != nil {
		return 0, err
	}
	if err := WaitHTTP(ctx, adminHTTP, c.ServerURL+"/readyz", 90*time.Second, api); err != nil {
		return 0, fmt.Errorf("kube-apiserver after a restart: %w", err)
	}
	return time.Since(down), nil
}

// WriteKubeconfig writes a kubeconfig for the client certificate
// pki/<user>.crt.
func (c *Cluster) WriteKubeconfig(path, user string) error {
	return WriteKubeconfig(path, c.ServerURL, c.PKI.Path("ca.crt"), clientcmdapi.AuthInfo{
		ClientCertificate: c.PKI.Path(user + ".crt"), ClientKey: c.PKI.Path(user + ".key")})
}

// WriteKubeconfig writes a kubeconfig of one server, trusted through
// caFile, with the credentials of auth (client certificate files, a
// username and password, a token): for the stack's users, and for the
// credentials of a server that takes kubeconfigs (Prometheus, through
// --prometheus-auth-config).
func WriteKubeconfig(path, server, caFile string, auth clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["user"] = &auth
	cfg.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "user"}
	cfg.CurrentContext = "local"
	return clientcmd.WriteToFile(*cfg, path)
}

// HTTPClient returns a client that trusts the cluster CA and presents
// pki/<user>.crt; user "" presents no certificate.
func (c *Cluster) HTTPClient(user string) (*http.Client, error) {
	caPEM, err := os.ReadFile(c.PKI.Path("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tlsCfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if user != "" {
		cert, err := tls.LoadX509KeyPair(c.PKI.Path(user+".crt"), c.PKI.Path(user+".key"))
		if err != nil {
			return nil, err
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}, nil
}
