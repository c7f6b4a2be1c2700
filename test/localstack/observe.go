package localstack

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Get GETs url (a server of the stack: an adapter's URL and a path, the
// API server's) as user (a client certificate of the stack's PKI: "admin";
// "" for none), with the headers of header (Impersonate-User, to be
// someone else), and returns the status code and the body.
func (s *Stack) Get(ctx context.Context, user, url string, header http.Header) (int, []byte, error) {
	client, err := s.HTTPClient(user)
	if err != nil {
		return 0, nil, err
	}
	client.Timeout = 30 * time.Second
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// SaveAdapterDebug saves what the stack's adapter answers an admin's GET of
// path (a /debug/pprof profile) into file, waiting for it up to timeout.
func (s *Stack) SaveAdapterDebug(ctx context.Context, path, file string, timeout time.Duration) error {
	admin, err := s.HTTPClient("admin")
	if err != nil {
		return err
	}
	admin.Timeout = timeout
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.AdapterURL+path, nil)
	if err != nil {
		return err
	}
	resp, err := admin.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %.200s", path, resp.StatusCode, data)
	}
	return os.WriteFile(file, data, 0o644)
}

// Metrics scrapes the /metrics of the server at baseURL (an adapter of the
// stack: its URL) with the admin's client certificate.
func (s *Stack) Metrics(ctx context.Context, baseURL string) (map[string]*dto.MetricFamily, error) {
	code, body, err := s.Get(ctx, "admin", baseURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %d", baseURL, code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(bytes.NewReader(body))
}

// Sum adds up the samples of family name whose labels include match (a
// counter's or a gauge's value, a histogram's count). It reports false when
// none matches.
func Sum(mfs map[string]*dto.MetricFamily, name string, match map[string]string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
	sum, found := 0.0, false
metrics:
	for _, m := range mf.GetMetric() {
		for k, v := range match {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == k && l.GetValue() == v }) {
				continue metrics
			}
		}
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		default:
			continue
		}
		found = true
	}
	return sum, found
}

// HoldsFor checks, every interval over window, that check holds: the
// window is watched, not slept through. It returns how long it watched
// (window, or less when check failed first) and check's first failure.
// check runs with ctx, not with the window's deadline: a call made just
// before the window ends must not fail for it (client-go's rate limiter
// refuses at once to wait past a context's deadline). An error is returned
// too when ctx ends before the window does.
func HoldsFor(ctx context.Context, window, interval time.Duration, check func(ctx context.Context) error) (time.Duration, error) {
	start := time.Now()
	var violated error
	err := wait.PollUntilContextTimeout(ctx, interval, window, true, func(context.Context) (bool, error) {
		violated = check(ctx)
		return false, violated
	})
	watched := time.Since(start)
	switch {
	case violated != nil:
		return watched, violated
	case ctx.Err() != nil:
		return watched, fmt.Errorf("watched %s of a %s window: %w", watched.Round(100*time.Millisecond), window, err)
	}
	return watched, nil
}

// ReadyPods lists the names of the ready pods of namespace that selector
// matches (the Ready condition the process kubelet writes), sorted.
func (s *Stack) ReadyPods(ctx context.Context, namespace, selector string) ([]string, error) {
	pods, err := s.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	var names []string
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && podReady(p) {
			names = append(names, p.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}
