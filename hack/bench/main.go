// Command bench is `make bench`: it measures what an HPA gets from the
// adapter next to what the same PromQL costs when sent straight to
// Prometheus, in one run, at several namespace sizes.
//
// It starts the local stack without a kubelet: a real kube-apiserver holds
// the pods as objects (created, never scheduled), a real Prometheus holds
// their series (app_requests_total for every pod, from one synthetic
// target), and the real adapter process serves them over HTTPS through its
// whole handler chain. Clients call the adapter as the aggregator does (the
// front-proxy client certificate, the HPA's identity in X-Remote-User), with
// the HPA's request: pods/*/requests-per-second?labelSelector=..., in
// protobuf as the HPA controller asks (-accept=json for kubectl's JSON).
//
// For every namespace size and selection it runs N clients against the
// adapter for a fixed time, then the same clients POSTing the same PromQL
// (taken from Prometheus' query log, so it is exactly what the adapter sent)
// to Prometheus for the same time, asking as the adapter asks (no gzip), and
// prints one table: throughput, p50 and p99 of both, their ratio, and the
// adapter's resident memory and CPU seconds; under each row, the CPU seconds
// of the adapter, Prometheus and the clients on each side, in total and per
// request. Every answer is checked for the number of pods it should hold.
//
// Before the rows it measures the floor: the adapter answering a selector
// that matches no pod, which needs no Prometheus query. That is what the
// serving path (TLS, HTTP/2, the API server's filters, encoding) costs on
// its own; no provider can answer for less on the same stack.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	cmv1beta2 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
	cmscheme "k8s.io/metrics/pkg/client/custom_metrics/scheme"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// selection is one way an HPA picks pods: k distinct label selectors, each
// matching want pods.
type selection struct {
	name      string
	selectors []string
	want      int
}

// selectionsFor returns the three selections of a namespace of n pods:
// every pod with one selector; 50 distinct selectors (app=app-0..49, n/50
// pods each); one selector of 100 pods (group=g0).
func selectionsFor(n int) []selection {
	fifty := make([]string, 50)
	for i := range fifty {
		fifty[i] = "app=app-" + strconv.Itoa(i)
	}
	return []selection{
		{name: "all, one selector", selectors: []string{"tier=bench"}, want: n},
		{name: "50 distinct selectors", selectors: fifty, want: n / 50},
		{name: "one selector of 100 pods", selectors: []string{"group=g0"}, want: min(n, 100)},
	}
}

func podLabels(i int) map[string]string {
	return map[string]string{"tier": "bench", "app": "app-" + strconv.Itoa(i%50), "group": "g" + strconv.Itoa(i/100)}
}

func namespaceFor(n int) string { return "bench-" + strconv.Itoa(n) }

func main() {
	if err := run(); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	sizes    []int
	duration time.Duration
	clients  int
	// profiles, when set, is where a CPU and a heap profile of the
	// adapter are written for each row.
	profiles string
	// accept is the Accept header of the adapter requests.
	accept string
}

// Accept headers: what the HPA controller sends (kube-controller-manager's
// --kube-api-content-type defaults to protobuf, and client-go adds */*),
// and what kubectl get --raw and most scripts send.
var accepts = map[string]string{
	"protobuf": "application/vnd.kubernetes.protobuf, */*",
	"json":     "application/json",
}

func run() error {
	sizes := flag.String("pods", "100,1000,10000", "Namespace sizes, comma-separated: one namespace of each size.")
	duration := flag.Duration("duration", 10*time.Second, "How long each side (adapter, raw Prometheus) is measured per row.")
	clients := flag.Int("clients", 16, "Concurrent clients.")
	dirFlag := flag.String("dir", "", "Run folder (default run/bench in the repository).")
	var env stringList
	flag.Var(&env, "adapter-env", "An environment variable for the adapter process, NAME=value (repeatable), e.g. GOMEMLIMIT=120MiB.")
	profiles := flag.String("profiles", "", "Folder for the adapter's CPU profile of each row's adapter side and a heap profile half way through it (go tool pprof reads them).")
	accept := flag.String("accept", "protobuf", "The answer's encoding the clients ask the adapter for: protobuf (as the HPA controller asks) or json (as kubectl get --raw asks).")
	flag.Parse()
	o := options{profiles: *profiles, accept: accepts[*accept]}
	if o.accept == "" {
		return fmt.Errorf("-accept: %q is neither protobuf nor json", *accept)
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 100 || n%50 != 0 {
			return fmt.Errorf("-pods: %q must be a multiple of 50, at least 100", s)
		}
		o.sizes = append(o.sizes, n)
	}
	if *duration <= 0 || *clients < 1 {
		return errors.New("-duration and -clients must be positive")
	}
	o.duration, o.clients = *duration, *clients
	if o.profiles != "" {
		if err := os.MkdirAll(o.profiles, 0o755); err != nil {
			return err
		}
	}

	dir, err := localstack.FreshRunDir(*dirFlag, "bench")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The synthetic target: app_requests_total for every pod of every
	// namespace, pod i growing by 1 + i%7 per second.
	var pods []podRef
	for _, n := range o.sizes {
		for i := range n {
			pods = append(pods, podRef{namespace: namespaceFor(n), name: fmt.Sprintf("app-%05d", i), rate: float64(1 + i%7)})
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	exp := &http.Server{Handler: exporter{pods: pods, start: time.Now()}, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = exp.Serve(ln) }()
	defer func() { _ = exp.Close() }()

	queryLog := filepath.Join(dir, "prometheus-queries.log")
	fmt.Printf("== starting the stack without a kubelet (logs in %s)\n", dir)
	s, err := localstack.StartStack(ctx, localstack.StackOptions{
		ClusterOptions: localstack.ClusterOptions{
			Dir: dir, Progress: os.Stdout,
			// Pods are only objects here: no controller needs to act on them.
			Controllers: []string{"serviceaccount-controller", "serviceaccount-token-controller"},
		},
		NoKubelet: true,
		// Prometheus scraping the adapter would count in its CPU.
		NoAdapterScrape: true,
		ExtraScrapeConfigs: []map[string]any{{
			"job_name": "bench-pods", "honor_labels": true,
			"static_configs": []any{map[string]any{"targets": []any{ln.Addr().String()}}},
		}},
		QueryLog:   queryLog,
		AdapterEnv: env,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("== stopping everything")
		if err := s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()

	if err := createPods(ctx, s, o.sizes); err != nil {
		return err
	}
	b, err := newBench(s, queryLog, o)
	if err != nil {
		return err
	}
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	readyRSS := b.rss()
	if err := b.heapProfile(ctx, "ready"); err != nil {
		return err
	}
	fmt.Printf("== adapter ready, RSS %s; %d clients, %s per side per row\n\n", mib(readyRSS), o.clients, o.duration)

	// The PromQL of every selector, from one adapter request each while
	// nothing else runs, so Prometheus' query log holds just that query.
	queries := map[string]string{}
	for _, n := range o.sizes {
		for _, sel := range selectionsFor(n) {
			for _, selector := range sel.selectors {
				q, err := b.queryOf(ctx, namespaceFor(n), selector, sel.want)
				if err != nil {
					return err
				}
				queries[namespaceFor(n)+"/"+selector] = q
			}
		}
	}

	// The floor: what the adapter's serving path costs with nothing to
	// ask Prometheus, a selector no pod matches. No design of the provider
	// serves a request for less than this on the same stack.
	fl, err := b.floor(ctx, namespaceFor(o.sizes[0]))
	if err != nil {
		return err
	}
	fmt.Println(floorLine(fl))
	fmt.Println(idleLine(fl))

	var rows []row
	for _, n := range o.sizes {
		for _, sel := range selectionsFor(n) {
			r, err := b.measure(ctx, n, sel, queries)
			if err != nil {
				return fmt.Errorf("%d pods, %s: %w", n, sel.name, err)
			}
			fmt.Println(r.line(fl))
			rows = append(rows, r)
		}
	}
	fmt.Printf("\n%s\n%s\n%s\n", table(rows, fl), floorLine(fl), idleLine(fl))
	fmt.Printf("adapter RSS when ready: %s, after the run: %s (peak %s; peak of its anonymous part, RssAnon: %s)\n",
		mib(readyRSS), mib(b.rss()), mib(b.peakRSS.Load()), mib(b.peakAnon.Load()))
	file, err := writePlot(rows, fl, dir)
	if err != nil {
		return err
	}
	fmt.Printf("plot: %s\n", file)
	return nil
}

type podRef struct {
	namespace, name string
	rate            float64
}

type exporter struct {
	pods  []podRef
	start time.Time
}

func (e exporter) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	elapsed := time.Since(e.start).Seconds()
	bw := bufio.NewWriterSize(w, 64<<10)
	_, _ = bw.WriteString("# TYPE app_requests_total counter\n")
	for _, p := range e.pods {
		_, _ = fmt.Fprintf(bw, "app_requests_total{namespace=%q,pod=%q,endpoint=\"/\"} %.3f\n", p.namespace, p.name, elapsed*p.rate)
	}
	_ = bw.Flush()
}

// createPods creates the namespaces and their pods as objects.
func createPods(ctx context.Context, s *localstack.Stack, sizes []int) error {
	cfg := rest.CopyConfig(s.Admin)
	cfg.QPS, cfg.Burst = 2000, 2000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	start := time.Now()
	total := 0
	for _, n := range sizes {
		ns := namespaceFor(n)
		if err := localstack.CreateNamespace(ctx, client, ns); err != nil {
			return err
		}
		work := make(chan int)
		var firstErr error
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				for i := range work {
					p := &corev1.Pod{
						ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("app-%05d", i), Labels: podLabels(i)},
						Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "bench.invalid/app:never-pulled"}}},
					}
					if _, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
						mu.Lock()
						firstErr = cmpErr(firstErr, err)
						mu.Unlock()
					}
				}
			})
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()
		if firstErr != nil {
			return fmt.Errorf("creating pods in %s: %w", ns, firstErr)
		}
		total += n
	}
	fmt.Printf("== created %d pods in %s\n", total, time.Since(start).Round(100*time.Millisecond))
	return nil
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

type bench struct {
	s        *localstack.Stack
	queryLog string
	o        options
	adapter  *http.Client
	raw      *http.Client
	pid      int
	peakRSS  atomic.Int64
	peakAnon atomic.Int64
}

func newBench(s *localstack.Stack, queryLog string, o options) (*bench, error) {
	caPEM, err := os.ReadFile(s.PKI.Path("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	// What the aggregator presents: the front-proxy client certificate.
	cert, err := tls.LoadX509KeyPair(s.PKI.Path("front-proxy-client.crt"), s.PKI.Path("front-proxy-client.key"))
	if err != nil {
		return nil, err
	}
	adapterTransport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: o.clients,
	}
	// Asked exactly as the adapter asks: its Prometheus client (from
	// prometheus/common) does not ask for gzip, and a gzipped answer costs
	// Prometheus several times the CPU of the query itself.
	rawTransport := &http.Transport{MaxIdleConnsPerHost: o.clients, DisableCompression: true}
	return &bench{
		s: s, queryLog: queryLog, o: o,
		adapter: &http.Client{Transport: adapterTransport, Timeout: 30 * time.Second},
		raw:     &http.Client{Transport: rawTransport, Timeout: 30 * time.Second},
		pid:     s.Adapter.PID(),
	}, nil
}

// adapterRequest is the HPA's request, as the aggregator forwards it.
func (b *bench) adapterRequest(ctx context.Context, namespace, selector string) (*http.Request, error) {
	u := b.s.AdapterURL + "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace +
		"/pods/*/requests-per-second?labelSelector=" + url.QueryEscape(selector)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
	for _, g := range []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"} {
		req.Header.Add("X-Remote-Group", g)
	}
	req.Header.Set("Accept", b.o.accept)
	return req, nil
}

// rawRequest POSTs a query to Prometheus, as the adapter does.
func (b *bench) rawRequest(ctx context.Context, query string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.s.Prometheus.URL+"/api/v1/query",
		strings.NewReader(url.Values{"query": {query}}.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req, nil
}

// waitReady waits until the adapter serves every pod of the largest
// namespace with a rate.
func (b *bench) waitReady(ctx context.Context) error {
	n := slices.Max(b.o.sizes)
	var last string
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		req, err := b.adapterRequest(ctx, namespaceFor(n), "tier=bench")
		if err != nil {
			return false, err
		}
		got, err := b.count(req, adapterItem)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("%d of %d pods have values", got, n)
		return got == n, nil
	})
	if err != nil {
		return fmt.Errorf("the adapter never served all %d pods: %s: %w", n, last, err)
	}
	return nil
}

var (
	adapterItem = []byte(`"describedObject"`)
	rawItem     = []byte(`"metric"`)
)

// count sends req and counts the items of a 200 answer (without decoding
// it: the clients share the two cores with the servers).
func (b *bench) count(req *http.Request, item []byte) (int, error) {
	client := b.raw
	if bytes.Equal(item, adapterItem) {
		client = b.adapter
	}
	body, contentType, err := fetch(client, req)
	if err != nil {
		return 0, err
	}
	if bytes.Equal(item, adapterItem) && strings.HasPrefix(contentType, "application/vnd.kubernetes.protobuf") {
		return countProtobufItems(body)
	}
	return bytes.Count(body, item), nil
}

// fetch sends req and returns the body and content type of a 200 answer.
func fetch(client *http.Client, req *http.Request) ([]byte, string, error) {
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("%s: %d %s", req.URL.Path, resp.StatusCode, truncate(body))
	}
	return body, resp.Header.Get("Content-Type"), nil
}

// decodeCheck decodes one answer in full, as the HPA controller's client
// does, and checks it holds want pods of namespace, each with a value, and
// that the clients' count of items agrees.
func (b *bench) decodeCheck(ctx context.Context, namespace, selector string, want int) error {
	req, err := b.adapterRequest(ctx, namespace, selector)
	if err != nil {
		return err
	}
	body, contentType, err := fetch(b.adapter, req)
	if err != nil {
		return err
	}
	obj, _, err := cmscheme.Codecs.UniversalDeserializer().Decode(body, nil, nil)
	if err != nil {
		return fmt.Errorf("decoding the answer (%s): %w", contentType, err)
	}
	list, ok := obj.(*cmv1beta2.MetricValueList)
	if !ok {
		return fmt.Errorf("the answer is a %T, want a v1beta2 MetricValueList", obj)
	}
	pods := map[string]bool{}
	for _, v := range list.Items {
		if v.DescribedObject.Kind != "Pod" || v.DescribedObject.Namespace != namespace || v.Value.Sign() <= 0 {
			return fmt.Errorf("%s: unexpected value %s %s/%s = %s", selector, v.DescribedObject.Kind,
				v.DescribedObject.Namespace, v.DescribedObject.Name, v.Value.String())
		}
		pods[v.DescribedObject.Name] = true
	}
	if len(pods) != want || len(list.Items) != want {
		return fmt.Errorf("%s: %d values for %d pods decoded, want %d", selector, len(list.Items), len(pods), want)
	}
	return nil
}

// countProtobufItems counts the items of a MetricValueList in Kubernetes'
// protobuf envelope (the magic "k8s\x00", then a runtime.Unknown whose
// field 1 is the type and field 2 the object) without decoding the items:
// the object's field 2 is repeated once per item. decodeProtobuf checks it
// against the full decoder once per selector.
func countProtobufItems(body []byte) (int, error) {
	unknown, ok := bytes.CutPrefix(body, []byte("k8s\x00"))
	if !ok {
		return 0, errors.New("protobuf answer without the k8s envelope")
	}
	var kind string
	var raw []byte
	if err := protoFields(unknown, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return protoFields(v, func(num protowire.Number, v []byte) error {
				if num == 2 {
					kind = string(v)
				}
				return nil
			})
		case 2:
			raw = v
		}
		return nil
	}); err != nil {
		return 0, err
	}
	if kind != "MetricValueList" {
		return 0, fmt.Errorf("protobuf answer of kind %q, want MetricValueList", kind)
	}
	n := 0
	err := protoFields(raw, func(num protowire.Number, _ []byte) error {
		if num == 2 {
			n++
		}
		return nil
	})
	return n, err
}

// protoFields calls f with each length-delimited field of a message and
// skips the others.
func protoFields(b []byte, f func(protowire.Number, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if err := f(num, v); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

// queryOf sends one adapter request for selector and returns the PromQL
// the adapter sent, from Prometheus' query log.
func (b *bench) queryOf(ctx context.Context, namespace, selector string, want int) (string, error) {
	before, err := os.Stat(b.queryLog)
	if err != nil {
		return "", err
	}
	req, err := b.adapterRequest(ctx, namespace, selector)
	if err != nil {
		return "", err
	}
	got, err := b.count(req, adapterItem)
	if err != nil {
		return "", err
	}
	if got != want {
		return "", fmt.Errorf("%s: %d pods in the answer, want %d", selector, got, want)
	}
	f, err := os.Open(b.queryLog)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(before.Size(), io.SeekStart); err != nil {
		return "", err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var queries []string
	for sc.Scan() {
		var entry struct {
			Params struct {
				Query string `json:"query"`
			} `json:"params"`
		}
		if err := json.Unmarshal(sc.Bytes(), &entry); err == nil && strings.Contains(entry.Params.Query, `namespace="`+namespace+`"`) {
			queries = append(queries, entry.Params.Query)
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if len(queries) != 1 {
		return "", fmt.Errorf("%s: %d queries in Prometheus' query log, want the adapter's one", selector, len(queries))
	}
	if err := b.decodeCheck(ctx, namespace, selector, want); err != nil {
		return "", err
	}
	return queries[0], nil
}

type row struct {
	// pods is the namespace's size, want the pods in each answer.
	pods, want   int
	selection    string
	adapter, raw side
	rss          int64
}

type result struct {
	n             int
	seconds       float64
	p50, p90, p99 time.Duration
}

func (r result) rate() float64 { return float64(r.n) / r.seconds }

// side is one side of a row (or the floor): its latencies, where the cores
// went meanwhile (CPU seconds of the adapter, Prometheus and the clients,
// this process), and the answers that failed or held the wrong number of
// items.
type side struct {
	result
	adapterCPU, promCPU, clientCPU float64
	errs, wrong                    int64
}

// run runs the clients for the side's duration, each request from req(i),
// and checks every answer holds want items.
func (b *bench) run(ctx context.Context, req func(context.Context, int) (*http.Request, error), item []byte, want int) side {
	adapter0, prom0, self0 := b.cpuSeconds(), localstack.CPUSeconds(b.s.Prometheus.Proc.PID()), localstack.CPUSeconds(os.Getpid())
	var errs, wrong atomic.Int64
	res := b.load(ctx, func(ctx context.Context, i int) error {
		r, err := req(ctx, i)
		if err != nil {
			return err
		}
		return b.check(r, item, want, &errs, &wrong)
	})
	return side{
		result:     res,
		adapterCPU: b.cpuSeconds() - adapter0,
		promCPU:    localstack.CPUSeconds(b.s.Prometheus.Proc.PID()) - prom0,
		clientCPU:  localstack.CPUSeconds(os.Getpid()) - self0,
		errs:       errs.Load(), wrong: wrong.Load(),
	}
}

// measure runs one row: the adapter side, then the raw side.
func (b *bench) measure(ctx context.Context, n int, sel selection, byNamespaceSelector map[string]string) (row, error) {
	ns := namespaceFor(n)
	queries := make([]string, len(sel.selectors))
	for i, s := range sel.selectors {
		queries[i] = byNamespaceSelector[ns+"/"+s]
	}
	r := row{pods: n, want: sel.want, selection: sel.name}
	profileDone := b.profile(ctx, fmt.Sprintf("%d-%s", n, strings.ReplaceAll(sel.name, " ", "-")))
	r.adapter = b.run(ctx, func(ctx context.Context, i int) (*http.Request, error) {
		return b.adapterRequest(ctx, ns, sel.selectors[i%len(sel.selectors)])
	}, adapterItem, sel.want)
	r.rss = b.rss()
	if err := <-profileDone; err != nil {
		return r, err
	}
	r.raw = b.run(ctx, func(ctx context.Context, i int) (*http.Request, error) {
		return b.rawRequest(ctx, queries[i%len(queries)])
	}, rawItem, sel.want)
	if r.adapter.errs+r.adapter.wrong+r.raw.errs+r.raw.wrong > 0 {
		return r, fmt.Errorf("failed answers: adapter %d errors, %d with the wrong number of pods; raw %d errors, %d wrong",
			r.adapter.errs, r.adapter.wrong, r.raw.errs, r.raw.wrong)
	}
	return r, nil
}

// floorSelector matches none of the bench's pods.
const floorSelector = "app=none"

// floor is the floor side, and what the adapter and Prometheus spend with
// no request at all (CPU seconds per second, over idleWindow): Prometheus
// scrapes, evaluates and compacts, the adapter lists series and watches,
// whatever the requests. The ratio against the stack's limit counts CPU
// net of it, so that a side is not charged for background work by how few
// requests it served meanwhile.
type floor struct {
	side
	idleAdapter, idleProm float64
}

// idleWindow is how long the idle CPU is measured.
const idleWindow = 10 * time.Second

// floor measures the idle CPU, then the adapter answering floorSelector in
// namespace: empty answers, no Prometheus query.
func (b *bench) floor(ctx context.Context, namespace string) (floor, error) {
	adapter0, prom0, t0 := b.cpuSeconds(), localstack.CPUSeconds(b.s.Prometheus.Proc.PID()), time.Now()
	select {
	case <-time.After(idleWindow):
	case <-ctx.Done():
		return floor{}, ctx.Err()
	}
	elapsed := time.Since(t0).Seconds()
	fl := floor{idleAdapter: (b.cpuSeconds() - adapter0) / elapsed, idleProm: (localstack.CPUSeconds(b.s.Prometheus.Proc.PID()) - prom0) / elapsed}
	fl.side = b.run(ctx, func(ctx context.Context, _ int) (*http.Request, error) {
		return b.adapterRequest(ctx, namespace, floorSelector)
	}, adapterItem, 0)
	if fl.errs+fl.wrong > 0 {
		return fl, fmt.Errorf("floor: %d errors, %d answers that were not empty", fl.errs, fl.wrong)
	}
	return fl, nil
}

func idleLine(f floor) string {
	return fmt.Sprintf("idle (no request, %s): adapter %.1f %% of a core, Prometheus %.1f %%; the ratio against the stack's limit counts CPU net of it",
		idleWindow, 100*f.idleAdapter, 100*f.idleProm)
}

func floorLine(f floor) string {
	return fmt.Sprintf("floor: no pod selected, no Prometheus query: adapter %7.1f req/s (p50 %s, p99 %s); CPU ms per request: adapter %.3f, clients %.3f",
		f.rate(), ms(f.p50), ms(f.p99), perRequest(f.adapterCPU, f.n), perRequest(f.clientCPU, f.n))
}

func (b *bench) check(req *http.Request, item []byte, want int, errs, wrong *atomic.Int64) error {
	got, err := b.count(req, item)
	switch {
	case err != nil:
		if req.Context().Err() == nil {
			errs.Add(1)
			if errs.Load() == 1 {
				fmt.Fprintln(os.Stderr, "first failure:", err)
			}
		}
	case got != want:
		wrong.Add(1)
	}
	return nil
}

// load runs the clients for the row's duration, client c sending request
// c, c+clients, ... (so the selectors are spread over the clients), and
// returns the throughput and latencies. It samples the adapter's memory
// meanwhile.
func (b *bench) load(ctx context.Context, do func(ctx context.Context, i int) error) result {
	ctx, cancel := context.WithTimeout(ctx, b.o.duration)
	defer cancel()
	latencies := make([][]time.Duration, b.o.clients)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range b.o.clients {
		wg.Go(func() {
			for i := c; ctx.Err() == nil; i += b.o.clients {
				t := time.Now()
				_ = do(ctx, i)
				if ctx.Err() == nil {
					latencies[c] = append(latencies[c], time.Since(t))
				}
			}
		})
	}
	wg.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				b.rss()
			}
		}
	})
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	slices.Sort(all)
	res := result{n: len(all), seconds: elapsed}
	if len(all) > 0 {
		res.p50 = all[len(all)/2]
		res.p90 = all[min(len(all)-1, len(all)*90/100)]
		res.p99 = all[min(len(all)-1, len(all)*99/100)]
	}
	return res
}

// profile fetches a CPU profile of the adapter over the next duration
// (less a second) and a heap profile half way through, into the profiles
// folder, when that folder is set; the channel reports the outcome.
func (b *bench) profile(ctx context.Context, name string) <-chan error {
	done := make(chan error, 1)
	if b.o.profiles == "" {
		done <- nil
		return done
	}
	seconds := max(1, int((b.o.duration-time.Second)/time.Second))
	go func() {
		heap := make(chan error, 1)
		go func() {
			// The live heap under load, half way through.
			select {
			case <-time.After(b.o.duration / 2):
				heap <- b.heapProfile(ctx, name)
			case <-ctx.Done():
				heap <- ctx.Err()
			}
		}()
		err := b.fetchProfile(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), name+".cpu.pprof")
		done <- errors.Join(err, <-heap)
	}()
	return done
}

// heapProfile writes a heap profile of the adapter now, when the profiles
// folder is set.
func (b *bench) heapProfile(ctx context.Context, name string) error {
	if b.o.profiles == "" {
		return nil
	}
	return b.fetchProfile(ctx, "/debug/pprof/heap", name+".heap.pprof")
}

// fetchProfile saves what the adapter's path answers (as an admin) to file
// in the profiles folder.
func (b *bench) fetchProfile(ctx context.Context, path, file string) error {
	return b.s.SaveAdapterDebug(ctx, path, filepath.Join(b.o.profiles, file), b.o.duration+30*time.Second)
}

// rss is the adapter's resident memory now, in bytes; it also tracks the
// peaks of all of it and of its anonymous part (RssAnon: the heap and
// stacks, what a container's memory limit cannot reclaim, unlike the
// binary's own pages).
func (b *bench) rss() int64 {
	// The peaks are the highest values sampled here, not the kernel's
	// VmHWM.
	rss, anon := localstack.Memory(b.pid)
	raise(&b.peakRSS, rss)
	raise(&b.peakAnon, anon)
	return rss
}

// raise sets peak to v if v is higher.
func raise(peak *atomic.Int64, v int64) {
	for {
		p := peak.Load()
		if v <= p || peak.CompareAndSwap(p, v) {
			return
		}
	}
}

// cpuSeconds is the adapter's user and system CPU time so far.
func (b *bench) cpuSeconds() float64 { return localstack.CPUSeconds(b.pid) }

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// stackLimit is the row's CPU per request against the limit of the
// serving stack: what the floor costs per request (adapter and clients)
// plus what raw Prometheus spends on the query, divided by what a request
// costs on the adapter side (the adapter, its Prometheus and the clients).
// 1 would be a provider that adds nothing to the stack and the query. The
// adapter's and Prometheus' CPU count net of what they spend idle.
func (r row) stackLimit(fl floor) float64 {
	net := func(cpu, idle float64, s side) float64 { return max(0, cpu-idle*s.seconds) }
	limit := perRequest(net(fl.adapterCPU, fl.idleAdapter, fl.side), fl.n) + perRequest(fl.clientCPU, fl.n) +
		perRequest(net(r.raw.promCPU, fl.idleProm, r.raw), r.raw.n)
	cost := perRequest(net(r.adapter.adapterCPU, fl.idleAdapter, r.adapter), r.adapter.n) +
		perRequest(net(r.adapter.promCPU, fl.idleProm, r.adapter), r.adapter.n) + perRequest(r.adapter.clientCPU, r.adapter.n)
	if cost == 0 {
		return 0
	}
	return limit / cost
}

func (r row) line(fl floor) string {
	a, w := r.adapter, r.raw
	return fmt.Sprintf("%6d pods, %-26s adapter %7.1f req/s (p50 %s, p90 %s, p99 %s)  raw %7.1f req/s (p50 %s, p90 %s, p99 %s)  ratio %.2f  of the stack's limit %.2f  RSS %s\n"+
		"%40s CPU s: adapter side: adapter %.1f, Prometheus %.1f, clients %.1f; raw side: Prometheus %.1f, clients %.1f\n"+
		"%40s CPU ms per request: adapter side: adapter %.3f, Prometheus %.3f, clients %.3f; raw side: Prometheus %.3f, clients %.3f",
		r.pods, r.selection, a.rate(), ms(a.p50), ms(a.p90), ms(a.p99),
		w.rate(), ms(w.p50), ms(w.p90), ms(w.p99), a.rate()/w.rate(), r.stackLimit(fl), mib(r.rss),
		"", a.adapterCPU, a.promCPU, a.clientCPU, w.promCPU, w.clientCPU,
		"", perRequest(a.adapterCPU, a.n), perRequest(a.promCPU, a.n), perRequest(a.clientCPU, a.n),
		perRequest(w.promCPU, w.n), perRequest(w.clientCPU, w.n))
}

// perRequest is CPU seconds spread over n requests, in milliseconds.
func perRequest(seconds float64, n int) float64 { return 1000 * seconds / float64(max(n, 1)) }

func table(rows []row, fl floor) string {
	var b strings.Builder
	b.WriteString("| pods in namespace | selection | adapter req/s | adapter p50 | adapter p99 | raw req/s | raw p50 | raw p99 | ratio | of the stack's limit | adapter RSS | adapter CPU s |\n")
	b.WriteString("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %.0f | %s | %s | %.2f | %.2f | %s | %.1f |\n",
			thousands(r.pods), r.selection, r.adapter.rate(), ms(r.adapter.p50), ms(r.adapter.p99),
			r.raw.rate(), ms(r.raw.p50), ms(r.raw.p99), r.adapter.rate()/r.raw.rate(), r.stackLimit(fl), mib(r.rss), r.adapter.adapterCPU)
	}
	return b.String()
}

func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
