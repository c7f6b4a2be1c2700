package localstack

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
)

// IngressController plays a cluster's ingress controller on the local
// stack, next to the process kubelet: it reads the Ingress objects, gives
// each one a listener on 127.0.0.1 (written to the Ingress' status as its
// load balancer address, as a cloud load balancer's would be), and proxies
// every request to a ready pod behind the Ingress' backend Service, round
// robin, or answers 503 when there is none (the app at zero replicas).
//
// It counts every request it received, answered or not, in a Prometheus
// counter that Prometheus scrapes: traffic in front of the pods, which
// goes on existing when the app is scaled to zero. The counter has
// ingress-nginx's name and labels (nginx_ingress_controller_requests with
// namespace, ingress, service and status), so the rules shipped for
// ingress-nginx serve the local stack as they are.
type IngressController struct {
	Client kubernetes.Interface
	// Progress receives a line per Ingress served or dropped; nil
	// discards.
	Progress io.Writer
	// MetricsAddr is where /metrics is served, once Start returned.
	MetricsAddr string

	requests *prometheus.CounterVec
	metrics  *http.Server
	pods     corelisters.PodLister
	services corelisters.ServiceLister

	mu     sync.Mutex
	routes map[string]*ingressRoute // namespace/name
	wg     sync.WaitGroup
	done   chan struct{}
}

// ingressRoute is one Ingress and its listener.
type ingressRoute struct {
	ing    atomic.Pointer[networkingv1.Ingress]
	server *http.Server
	port   int
	next   atomic.Uint64
}

// IngressRequestsMetric is the counter's name, ingress-nginx's.
const IngressRequestsMetric = "nginx_ingress_controller_requests"

// Start serves /metrics and watches Ingresses, Services and pods until ctx
// is done; it returns once the caches are filled.
func (c *IngressController) Start(ctx context.Context) error {
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	c.routes = map[string]*ingressRoute{}
	c.done = make(chan struct{})
	reg := prometheus.NewRegistry()
	c.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: IngressRequestsMetric,
		Help: "Requests the local stack's ingress received, by the Ingress' namespace and name, its backend Service and the status answered (ingress-nginx's metric).",
	}, []string{"namespace", "ingress", "service", "status"})
	reg.MustRegister(c.requests)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	c.MetricsAddr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	c.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	c.wg.Go(func() { _ = c.metrics.Serve(ln) })

	factory := informers.NewSharedInformerFactory(c.Client, 0)
	c.pods = factory.Core().V1().Pods().Lister()
	c.services = factory.Core().V1().Services().Lister()
	ingresses := factory.Networking().V1().Ingresses().Informer()
	if _, err := ingresses.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.serve(ctx, obj) },
		UpdateFunc: func(_, obj any) { c.serve(ctx, obj) },
		DeleteFunc: c.drop,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("the ingress' cache of %v did not fill", typ)
		}
	}
	context.AfterFunc(ctx, c.stop)
	return nil
}

// Done is closed once every listener is closed, after Start's ctx ended.
func (c *IngressController) Done() <-chan struct{} { return c.done }

// stop closes every listener.
func (c *IngressController) stop() {
	defer close(c.done)
	c.mu.Lock()
	servers := []*http.Server{c.metrics}
	for _, r := range c.routes {
		servers = append(servers, r.server)
	}
	c.mu.Unlock()
	for _, s := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.Shutdown(sctx)
		cancel()
	}
	c.wg.Wait()
}

// serve starts or updates the listener of an Ingress and writes its
// address to the Ingress' status.
func (c *IngressController) serve(ctx context.Context, obj any) {
	ing, ok := obj.(*networkingv1.Ingress)
	if !ok {
		return
	}
	key := ing.Namespace + "/" + ing.Name
	c.mu.Lock()
	r, exists := c.routes[key]
	if !exists {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.mu.Unlock()
			fmt.Fprintf(c.Progress, "ingress %s: %v\n", key, err)
			return
		}
		r = &ingressRoute{port: ln.Addr().(*net.TCPAddr).Port}
		r.ing.Store(ing)
		r.server = &http.Server{Handler: c.handler(r), ReadHeaderTimeout: 5 * time.Second}
		c.routes[key] = r
		c.wg.Go(func() { _ = r.server.Serve(ln) })
		fmt.Fprintf(c.Progress, "ingress %s: serving on 127.0.0.1:%d\n", key, r.port)
	}
	r.ing.Store(ing)
	c.mu.Unlock()
	if want := loadBalancer(r.port); !slices.EqualFunc(ing.Status.LoadBalancer.Ingress, want, func(a, b networkingv1.IngressLoadBalancerIngress) bool {
		return a.IP == b.IP && len(a.Ports) == 1 && a.Ports[0].Port == b.Ports[0].Port
	}) {
		c.writeStatus(ctx, ing, want)
	}
}

func loadBalancer(port int) []networkingv1.IngressLoadBalancerIngress {
	return []networkingv1.IngressLoadBalancerIngress{{IP: "127.0.0.1", Ports: []networkingv1.IngressPortStatus{{Port: int32(port), Protocol: corev1.ProtocolTCP}}}}
}

func (c *IngressController) writeStatus(ctx context.Context, ing *networkingv1.Ingress, lb []networkingv1.IngressLoadBalancerIngress) {
	err := retry.RetryOnConflict(conflictBackoff, func() error {
		cur, err := c.Client.NetworkingV1().Ingresses(ing.Namespace).Get(ctx, ing.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.LoadBalancer.Ingress = lb
		_, err = c.Client.NetworkingV1().Ingresses(ing.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		fmt.Fprintf(c.Progress, "ingress %s/%s: writing its status: %v\n", ing.Namespace, ing.Name, err)
	}
}

// drop closes the listener of a deleted Ingress.
func (c *IngressController) drop(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	ing, ok := obj.(*networkingv1.Ingress)
	if !ok {
		return
	}
	key := ing.Namespace + "/" + ing.Name
	c.mu.Lock()
	r := c.routes[key]
	delete(c.routes, key)
	c.mu.Unlock()
	if r != nil {
		_ = r.server.Close()
		fmt.Fprintf(c.Progress, "ingress %s: dropped\n", key)
	}
}

// statusWriter keeps the status code answered.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// handler routes one Ingress' requests.
func (c *IngressController) handler(r *ingressRoute) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ing := r.ing.Load()
		sw := &statusWriter{ResponseWriter: w}
		service := ""
		defer func() {
			c.requests.WithLabelValues(ing.Namespace, ing.Name, service, strconv.Itoa(sw.code)).Inc()
		}()
		backend := route(ing, req)
		if backend == nil {
			http.Error(sw, "no rule of the Ingress matches "+req.URL.Path, http.StatusNotFound)
			return
		}
		service = backend.Name
		target, err := c.pick(r, ing.Namespace, backend)
		if err != nil {
			http.Error(sw, err.Error(), http.StatusServiceUnavailable)
			return
		}
		proxy := &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.SetXForwarded() },
			ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
				http.Error(w, "the pod did not answer: "+err.Error(), http.StatusBadGateway)
			},
		}
		proxy.ServeHTTP(sw, req)
	})
}

// route finds the backend of a request: the longest matching path of a
// rule whose host matches (or has none), else the default backend.
func route(ing *networkingv1.Ingress, req *http.Request) *networkingv1.IngressServiceBackend {
	host, _, err := net.SplitHostPort(req.Host)
	if err != nil {
		host = req.Host
	}
	var best *networkingv1.IngressServiceBackend
	bestLen := -1
	for _, rule := range ing.Spec.Rules {
		if rule.HTTP == nil || (rule.Host != "" && rule.Host != host) {
			continue
		}
		for _, p := range rule.HTTP.Paths {
			exact := p.PathType != nil && *p.PathType == networkingv1.PathTypeExact
			ok := req.URL.Path == p.Path || (!exact && pathPrefix(req.URL.Path, p.Path))
			if ok && len(p.Path) > bestLen && p.Backend.Service != nil {
				best, bestLen = p.Backend.Service, len(p.Path)
			}
		}
	}
	if best == nil && ing.Spec.DefaultBackend != nil {
		best = ing.Spec.DefaultBackend.Service
	}
	return best
}

// pathPrefix matches as a Prefix path does: by whole path elements.
func pathPrefix(path, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, "/")
	return prefix == "" || path == prefix || strings.HasPrefix(path, prefix+"/")
}

// pick chooses the next ready pod behind a backend Service.
func (c *IngressController) pick(r *ingressRoute, namespace string, b *networkingv1.IngressServiceBackend) (*url.URL, error) {
	svc, err := c.services.Services(namespace).Get(b.Name)
	if err != nil {
		return nil, fmt.Errorf("backend Service %s: %w", b.Name, err)
	}
	i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
		return (b.Port.Name != "" && p.Name == b.Port.Name) || (b.Port.Number != 0 && p.Port == b.Port.Number)
	})
	if i < 0 || len(svc.Spec.Selector) == 0 {
		return nil, fmt.Errorf("backend Service %s has no such port, or no selector", b.Name)
	}
	pods, err := c.pods.Pods(namespace).List(labels.SelectorFromSet(svc.Spec.Selector))
	if err != nil {
		return nil, err
	}
	var targets []string
	for _, p := range pods {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" && podReady(p) {
			targets = append(targets, net.JoinHostPort(p.Status.PodIP, strconv.Itoa(targetPort(svc.Spec.Ports[i], p))))
		}
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("no ready pod behind Service %s/%s", namespace, b.Name)
	}
	slices.Sort(targets)
	return &url.URL{Scheme: "http", Host: targets[int(r.next.Add(1)%uint64(len(targets)))]}, nil
}

// targetPort is the port of pod a Service port sends to, as the
// EndpointSlice controller finds it: a named target port is the first
// container port of that name, in the order of containers and their ports;
// a number is itself; none is the Service port. The local ingress and the
// process kubelet's load targets both use it.
func targetPort(port corev1.ServicePort, pod *corev1.Pod) int {
	if port.TargetPort.StrVal != "" {
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == port.TargetPort.StrVal {
					return int(cp.ContainerPort)
				}
			}
		}
	}
	if t := port.TargetPort.IntValue(); t != 0 {
		return t
	}
	return int(port.Port)
}

// IngressURL waits until the local ingress serves the Ingress and returns
// its base URL (http://127.0.0.1:port), from the Ingress' status.
func IngressURL(ctx context.Context, client kubernetes.Interface, namespace, name string, timeout time.Duration) (string, error) {
	var u string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ing, err := client.NetworkingV1().Ingresses(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, lb := range ing.Status.LoadBalancer.Ingress {
			if lb.IP != "" && len(lb.Ports) > 0 {
				u = "http://" + net.JoinHostPort(lb.IP, strconv.Itoa(int(lb.Ports[0].Port)))
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("the Ingress %s/%s has no address from the local ingress: %w", namespace, name, err)
	}
	return u, nil
}
