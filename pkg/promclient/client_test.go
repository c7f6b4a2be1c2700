package promclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	promconfig "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
)

// request is what the fake Prometheus saw.
type request struct {
	method, path, query, auth, header string
	bodyQuery                         string
}

func readReply(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func fakeProm(t *testing.T, status int, body string) (*httptest.Server, *[]request) {
	t.Helper()
	var mu sync.Mutex
	var got []request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		if err := r.ParseForm(); err != nil {
			t.Errorf("ParseForm: %v", err)
		}
		mu.Lock()
		got = append(got, request{
			method: r.Method, path: r.URL.Path, query: r.URL.Query().Get("query"),
			auth: r.Header.Get("Authorization"), header: r.Header.Get("X-Scope-OrgID"),
			bodyQuery: string(raw),
		})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, &got
}

func TestQueryDecodesVector(t *testing.T) {
	srv, got := fakeProm(t, 200, readReply(t, "vector.json"))
	c, err := New(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	vec, err := c.Query(context.Background(), `sum(rate(app_requests_total{pod=~"a|b"}[1m])) by (pod)`)
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if len(vec) != 2 || vec[0].Metric["pod"] != "app-a" || vec[0].Value != 1.5 || vec[0].Timestamp != model.TimeFromUnixNano(1700000000500*int64(time.Millisecond)) {
		t.Errorf("vector = %v", vec)
	}
	if len(*got) != 1 || (*got)[0].path != "/api/v1/query" {
		t.Fatalf("requests = %+v", *got)
	}
	r := (*got)[0]
	if r.method != http.MethodPost || !strings.Contains(r.bodyQuery, "query=sum%28rate") || r.query != "" {
		t.Errorf("default method: got %s with body %q and URL query %q, want POST with the query in the body", r.method, r.bodyQuery, r.query)
	}
	if strings.Contains(r.bodyQuery, "time=") {
		t.Errorf("query names a time (%q); Prometheus' own clock should decide", r.bodyQuery)
	}
}

func TestQueryByGET(t *testing.T) {
	srv, got := fakeProm(t, 200, readReply(t, "vector.json"))
	c, err := New(Config{URL: srv.URL, Method: MethodGET})
	if err != nil {
		t.Fatal(err)
	}
	const expr = `x{pod="a&b=c"}`
	if _, err := c.Query(context.Background(), expr); err != nil {
		t.Fatalf("Query: %v", err)
	}
	r := (*got)[0]
	if r.method != http.MethodGet || r.query != expr || r.bodyQuery != "" {
		t.Errorf("got %s query=%q body=%q, want GET with the query in the URL", r.method, r.query, r.bodyQuery)
	}
}

func TestQueryRejectsNonVectorResults(t *testing.T) {
	srv, _ := fakeProm(t, 200, `{"status":"success","data":{"resultType":"scalar","result":[1700000000,"1"]}}`)
	c, err := New(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Query(context.Background(), "1")
	if err == nil || !strings.Contains(err.Error(), "not an instant vector") {
		t.Errorf("error = %v, want one about the result type", err)
	}
}

func TestSeries(t *testing.T) {
	srv, got := fakeProm(t, 200, readReply(t, "series.json"))
	c, err := New(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	// fixed date: only the range of the request, which the fake serves as it is.
	start, end := time.Unix(1700000000, 0), time.Unix(1700000060, 0)
	sets, err := c.Series(context.Background(), []string{`app_requests_total{pod!=""}`}, start, end)
	if err != nil {
		t.Fatalf("Series: %v", err)
	}
	if len(sets) != 2 || sets[1]["endpoint"] != "/mem" {
		t.Errorf("series = %v", sets)
	}
	r := (*got)[0]
	for _, want := range []string{"match%5B%5D=app_requests_total", "start=1700000000", "end=1700000060"} {
		if !strings.Contains(r.bodyQuery, want) {
			t.Errorf("series request %q lacks %q", r.bodyQuery, want)
		}
	}
}

func TestErrorsKeepTheirCause(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		kind   Kind
		want   string
	}{
		{name: "classifies bad_data as a bad query", status: 400, body: `{"status":"error","errorType":"bad_data","error":"parse error at char 5"}`, kind: BadQuery, want: "bad_data: parse error at char 5"},
		{name: "classifies Prometheus' own timeout", status: 503, body: `{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}`, kind: Timeout, want: "query timed out"},
		{name: "classifies an internal error as unavailable", status: 500, body: `{"status":"error","errorType":"internal","error":"out of memory"}`, kind: Unavailable, want: "out of memory"},
		{name: "classifies a proxy's HTML error as unavailable", status: 502, body: `<html>bad gateway</html>`, kind: Unavailable, want: "502"},
		{name: "classifies a broken body as unavailable", status: 200, body: `{"status":"success","data":{"resultType":"vector","result":[{`, kind: Unavailable, want: "bad_response"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := fakeProm(t, tc.status, tc.body)
			c, err := New(Config{URL: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Query(context.Background(), "up")
			if err == nil {
				t.Fatal("Query succeeded")
			}
			if got := Classify(err); got != tc.kind {
				t.Errorf("Classify(%v) = %v, want %v", err, got, tc.kind)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"up"`) {
				t.Errorf("error %q does not name the query and %q", err, tc.want)
			}
			var qe *QueryError
			if !errors.As(err, &qe) || qe.Expr != "up" {
				t.Errorf("error is %T, want *QueryError for up", err)
			}
		})
	}
}

func TestQueryDeadline(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c, err := New(Config{URL: srv.URL, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Query(context.Background(), "up")
	if !errors.Is(err, context.DeadlineExceeded) || Classify(err) != Timeout {
		t.Errorf("error = %v, want a deadline error classified Timeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.Query(ctx, "up")
	if Classify(err) != Canceled {
		t.Errorf("cancelled caller: error = %v, want Canceled", err)
	}
}

// A series listing is slower than a query on a large Prometheus: it is
// bounded by its caller's deadline (the discovery round's), not by the
// query timeout.
func TestSeriesIsBoundedByItsCallerNotTheQueryTimeout(t *testing.T) {
	body := readReply(t, "series.json")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(200 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	c, err := New(Config{URL: srv.URL, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sets, err := c.Series(ctx, []string{"up"}, time.Now().Add(-time.Minute), time.Now())
	if err != nil || len(sets) != 2 {
		t.Fatalf("a listing of 200 ms with a 50 ms query timeout and a 10 s deadline: %v, %v", sets, err)
	}
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Series(short, []string{"up"}, time.Now().Add(-time.Minute), time.Now()); Classify(err) != Timeout {
		t.Errorf("past the caller's deadline: error = %v, want a Timeout", err)
	}
}

func TestUnreachable(t *testing.T) {
	c, err := New(Config{URL: "http://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Query(context.Background(), "up")
	if Classify(err) != Unavailable || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error = %v, want Unavailable saying connection refused", err)
	}
}

func TestAuthenticationAndHeaders(t *testing.T) {
	srv, got := fakeProm(t, 200, readReply(t, "vector.json"))
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rt, err := promconfig.NewRoundTripperFromConfig(promconfig.HTTPClientConfig{
		Authorization: &promconfig.Authorization{Type: "Bearer", CredentialsFile: token},
	}, "test")
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{URL: srv.URL, RoundTripper: rt})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Query(context.Background(), "up"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("second\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Query(context.Background(), "up"); err != nil {
		t.Fatal(err)
	}
	if (*got)[0].auth != "Bearer first" || (*got)[1].auth != "Bearer second" {
		t.Errorf("Authorization headers = %q, %q; want the token re-read from the file", (*got)[0].auth, (*got)[1].auth)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "rejects a URL without scheme", cfg: Config{URL: "prometheus:9090"}, want: "scheme"},
		{name: "rejects a URL without host", cfg: Config{URL: "http://"}, want: "no host"},
		{name: "rejects an unparsable URL", cfg: Config{URL: "http://a b"}, want: "parsing"},
		{name: "rejects an unknown method", cfg: Config{URL: "http://p:9090", Method: "PUT"}, want: "GET or POST"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New(%+v) error = %v, want %q", tc.cfg, err, tc.want)
			}
		})
	}
}

// blockingTransport answers every request once released, counting them.
type blockingTransport struct {
	calls   atomic.Int32
	release chan struct{}
	body    string
}

func (b *blockingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	b.calls.Add(1)
	select {
	case <-b.release:
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
	return &http.Response{
		StatusCode: 200,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       io.NopCloser(strings.NewReader(b.body)),
		Request:    r,
	}, nil
}

func TestIdenticalConcurrentQueriesShareOneRequest(t *testing.T) {
	body := readReply(t, "vector.json")
	synctest.Test(t, func(t *testing.T) {
		tr := &blockingTransport{release: make(chan struct{}), body: body}
		c, err := New(Config{URL: "http://prometheus.test:9090", RoundTripper: tr, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		const callers = 16
		var wg sync.WaitGroup
		errs := make(chan error, callers+1)
		for range callers {
			wg.Go(func() {
				vec, err := c.Query(context.Background(), "same")
				if err == nil && len(vec) != 2 {
					err = fmt.Errorf("got %d samples", len(vec))
				}
				errs <- err
			})
		}
		wg.Go(func() {
			_, err := c.Query(context.Background(), "different")
			errs <- err
		})
		synctest.Wait() // everyone is blocked: on the transport or on a shared call
		if got := tr.calls.Load(); got != 2 {
			t.Errorf("%d requests reached Prometheus for 17 queries of 2 kinds, want 2", got)
		}
		close(tr.release)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})
}

func TestCallerDeadlineDoesNotCancelSharedQuery(t *testing.T) {
	body := readReply(t, "vector.json")
	synctest.Test(t, func(t *testing.T) {
		tr := &blockingTransport{release: make(chan struct{}), body: body}
		c, err := New(Config{URL: "http://prometheus.test:9090", RoundTripper: tr, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		impatient, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		first := make(chan error, 1)
		go func() { _, err := c.Query(impatient, "q"); first <- err }()
		synctest.Wait()
		second := make(chan error, 1)
		go func() { _, err := c.Query(context.Background(), "q"); second <- err }()
		time.Sleep(2 * time.Second) // the first caller's deadline passes
		if err := <-first; Classify(err) != Timeout {
			t.Errorf("impatient caller: %v, want Timeout", err)
		}
		close(tr.release)
		if err := <-second; err != nil {
			t.Errorf("patient caller sharing the query: %v", err)
		}
		if got := tr.calls.Load(); got != 1 {
			t.Errorf("%d requests, want 1", got)
		}
	})
}

// seriesAnswer is a series listing's answer of n series, each with a label
// of size bytes.
func seriesAnswer(n, size int) string {
	var b strings.Builder
	b.WriteString(`{"status":"success","data":[`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"__name__":"app_requests_total","namespace":"team-a","pod":"p-%d","note":"%s"}`, i, strings.Repeat("x", size))
	}
	b.WriteString(`]}`)
	return b.String()
}

// A limited listing (WithSeriesLimit, as a team's MetricRule listings are)
// asks Prometheus for one series more than the limit, and reads at most
// MaxBytesPerSeries per series of it: a store that ignores the limit, or
// sends series of huge labels, fails the listing at the bound instead of
// filling the adapter's memory; within the bound, the listing is served.
func TestSeriesLimitBoundsTheAnswer(t *testing.T) {
	// fixed date: only the range of the request, which the fake ignores.
	start, end := time.Unix(1700000000, 0), time.Unix(1700000060, 0)
	for _, c := range []struct {
		name     string
		n, size  int
		tooLarge bool
	}{
		{"within the bound", 3, 100, false},
		{"labels past the bytes per series", 3, 3 * MaxBytesPerSeries, true},
		{"a store that ignores the limit", 1000, 100, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, got := fakeProm(t, 200, seriesAnswer(c.n, c.size))
			cl, err := New(Config{URL: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			sets, err := cl.Series(WithSeriesLimit(context.Background(), 5), []string{`{namespace="team-a"}`}, start, end)
			if !strings.Contains((*got)[0].bodyQuery, "limit=6") {
				t.Errorf("listing request %q: want limit=6 (one more than the limit)", (*got)[0].bodyQuery)
			}
			if c.tooLarge {
				if !errors.Is(err, ErrAnswerTooLarge) {
					t.Fatalf("got %d series, error %v; want ErrAnswerTooLarge", len(sets), err)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("(%d bytes)", 6*MaxBytesPerSeries)) {
					t.Errorf("error %q does not name the bound", err)
				}
				return
			}
			if err != nil || len(sets) != c.n {
				t.Fatalf("got %d series, error %v; want %d", len(sets), err, c.n)
			}
		})
	}
	// Without a limit, the same large answer is read (up to MaxAnswerBytes).
	srv, _ := fakeProm(t, 200, seriesAnswer(1000, 100))
	cl, err := New(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if sets, err := cl.Series(context.Background(), []string{`{namespace="team-a"}`}, start, end); err != nil || len(sets) != 1000 {
		t.Errorf("unlimited listing: %d series, %v", len(sets), err)
	}
}
