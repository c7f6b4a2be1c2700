// Package promclient is the adapter's narrow client for Prometheus' HTTP
// API: a Client, built from a Config, that is a Querier (instant queries)
// and a SeriesLister (series listings), each bounded by a deadline, sent
// by GET or POST (Method), with bearer-token, TLS and header settings, with
// identical concurrent queries collapsed into one request, and every
// answer read within a bound.
//
// A failure is a QueryError naming the query, and Classify tells its Kind.
// The Client is an AnnotatedQuerier too: it returns what the store said
// beside the values (Annotations: warnings, infos, a partial flag), and by
// default (OnWarning) refuses an answer with warnings or flagged partial
// as a WarningsError. Requests carry the tenant of WithTenant when the
// store takes one.
//
// It returns errors that keep their cause (context.DeadlineExceeded,
// *v1.Error with Prometheus' error type, transport errors) so callers can
// tell a slow Prometheus from a broken query. It knows nothing about
// Kubernetes.
package promclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"golang.org/x/sync/singleflight"

	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// Querier runs instant queries. It is what the metrics provider needs.
type Querier interface {
	// Query evaluates expr at Prometheus' current time and returns the
	// resulting instant vector.
	Query(ctx context.Context, expr string) (model.Vector, error)
}

// SeriesLister lists series. It is what metric discovery needs.
type SeriesLister interface {
	// Series returns the label sets of the series matching any of matches
	// that had samples between start and end.
	Series(ctx context.Context, matches []string, start, end time.Time) ([]model.LabelSet, error)
}

// Method is the HTTP method used for queries.
type Method string

// Supported query methods.
const (
	MethodGET  Method = http.MethodGet
	MethodPOST Method = http.MethodPost
)

// Config configures a Client.
type Config struct {
	// URL is Prometheus' base URL, e.g. http://prometheus.monitoring:9090.
	URL string
	// RoundTripper carries authentication and TLS; nil means
	// http.DefaultTransport.
	RoundTripper http.RoundTripper
	// Method is GET or POST. POST has no limit on the query's size.
	Method Method
	// Timeout bounds every query, including waiting for a shared one.
	// Series listings are bounded by their caller's context instead.
	Timeout time.Duration
	// MaxQueryLength is the longest query the store takes, in bytes (0:
	// no limit); callers split or refuse longer ones (package query).
	MaxQueryLength int
	// TenantHeader or TenantParam (at most one), when set, carry the
	// tenant of each request (WithTenant) in that header or URL
	// parameter; a request without a tenant is refused before it is sent.
	TenantHeader, TenantParam string
	// OnWarning is what to do with an answer that carries warnings or is
	// flagged partial: RefuseWarnings (the default, "") or ServeWarnings.
	OnWarning OnWarning
}

// Client implements Querier and SeriesLister over Prometheus' HTTP API.
type Client struct {
	client    api.Client
	api       v1.API
	timeout   time.Duration
	maxLength int
	onWarning OnWarning
	flight    singleflight.Group
}

// MaxQueryLength is the longest query the store takes, in bytes; 0 for no
// limit.
func (c *Client) MaxQueryLength() int { return c.maxLength }

var (
	_ AnnotatedQuerier = (*Client)(nil)
	_ SeriesLister     = (*Client)(nil)
)

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("parsing Prometheus URL %q: %w", cfg.URL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("the Prometheus URL %q: scheme must be http or https", cfg.URL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("the Prometheus URL %q has no host", cfg.URL)
	}
	rt := cfg.RoundTripper
	if rt == nil {
		rt = http.DefaultTransport
	}
	switch {
	case cfg.TenantHeader != "" && cfg.TenantParam != "":
		return nil, errors.New("a tenant goes in a header or a URL parameter, not both")
	case cfg.TenantHeader != "" || cfg.TenantParam != "":
		// Innermost: the URL parameter joins those GET moves into the URL.
		rt = tenantRoundTripper{next: rt, header: cfg.TenantHeader, param: cfg.TenantParam}
	}
	if cfg.Method == MethodGET {
		rt = getRoundTripper{next: rt}
	} else if cfg.Method != MethodPOST && cfg.Method != "" {
		return nil, fmt.Errorf("query method %q: must be GET or POST", cfg.Method)
	}
	rt = limitRoundTripper{next: rt}
	c, err := api.NewClient(api.Config{Address: cfg.URL, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("creating Prometheus client for %q: %w", cfg.URL, err)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if cfg.MaxQueryLength < 0 {
		return nil, fmt.Errorf("the longest query must not be negative, got %d", cfg.MaxQueryLength)
	}
	onWarning := cfg.OnWarning
	switch onWarning {
	case "":
		onWarning = RefuseWarnings
	case RefuseWarnings, ServeWarnings:
	default:
		return nil, fmt.Errorf("onWarning %q: must be %s or %s", cfg.OnWarning, RefuseWarnings, ServeWarnings)
	}
	return &Client{client: c, api: v1.NewAPI(c), timeout: timeout, maxLength: cfg.MaxQueryLength, onWarning: onWarning}, nil
}

// Query implements Querier: QueryAnnotated without the annotations.
func (c *Client) Query(ctx context.Context, expr string) (model.Vector, error) {
	vec, _, err := c.QueryAnnotated(ctx, expr)
	return vec, err
}

// answer is one query's values and what the store said beside them.
type answer struct {
	vec model.Vector
	ann Annotations
}

// QueryAnnotated implements AnnotatedQuerier. Concurrent calls with the
// same expr (and tenant) share one request to Prometheus; each caller still
// waits no longer than its own context and the client's timeout allow. An
// answer with warnings or flagged partial is a WarningsError unless the
// client serves such answers (OnWarning).
func (c *Client) QueryAnnotated(ctx context.Context, expr string) (model.Vector, Annotations, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	// Requests share an answer only within one tenant.
	key := expr
	if tenant := TenantFrom(ctx); tenant != "" {
		key = tenant + "\x00" + expr
	}
	ch := c.flight.DoChan(key, func() (any, error) {
		// The shared request must not die with the first caller's context,
		// only with its own deadline.
		qctx, qcancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
		defer qcancel()
		start := time.Now()
		vec, ann, err := c.query(qctx, expr)
		klog.V(4).InfoS("Prometheus query done", "expr", ShortQuery(expr), "tenant", TenantFrom(ctx), "duration", time.Since(start), "err", err)
		if !ann.Empty() {
			klog.V(2).InfoS("Prometheus answer carries annotations", "expr", ShortQuery(expr), "tenant", TenantFrom(ctx), "annotations", ann.String())
		}
		return answer{vec, ann}, err
	})
	select {
	case r := <-ch:
		a, _ := r.Val.(answer)
		if r.Err != nil {
			return nil, a.ann, &QueryError{Expr: expr, Err: normalize(r.Err)}
		}
		if a.ann.Doubtful() && c.onWarning != ServeWarnings {
			return nil, a.ann, &QueryError{Expr: expr, Err: &WarningsError{Annotations: a.ann}}
		}
		return a.vec, a.ann, nil
	case <-ctx.Done():
		return nil, Annotations{}, &QueryError{Expr: expr, Err: ctx.Err()}
	}
}

// query POSTs an instant query at Prometheus' current time and decodes
// the answer with decodeQuery.
func (c *Client) query(ctx context.Context, expr string) (model.Vector, Annotations, error) {
	u := c.client.URL("/api/v1/query", nil)
	body := url.Values{"query": {expr}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(body))
	if err != nil {
		return nil, Annotations{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, data, err := c.client.Do(ctx, req)
	if err != nil {
		return nil, Annotations{}, err
	}
	vec, ann, err := decodeQuery(data)
	var apiErr *v1.Error
	switch {
	case resp.StatusCode/100 == 2:
		return vec, ann, err
	case errors.As(err, &apiErr) && apiErr.Type != v1.ErrBadResponse:
		// Prometheus' own error answer, with its type and message.
		return nil, ann, err
	case resp.StatusCode/100 == 5:
		return nil, ann, &v1.Error{Type: v1.ErrServer, Msg: fmt.Sprintf("server error: %d", resp.StatusCode), Detail: string(data)}
	default:
		return nil, ann, &v1.Error{Type: v1.ErrClient, Msg: fmt.Sprintf("client error: %d", resp.StatusCode), Detail: string(data)}
	}
}

// Series implements SeriesLister. It is bounded by ctx alone, not by the
// query timeout: discovery gives each listing the round's deadline
// (--discovery-timeout), as listings on a large Prometheus take longer
// than queries.
//
// With WithSeriesLimit, Prometheus is asked for at most one more series
// than the limit (its limit parameter; a store that ignores it sends them
// all), and the answer may carry at most MaxBytesPerSeries per series:
// past that the listing fails, and what was read is dropped.
func (c *Client) Series(ctx context.Context, matches []string, start, end time.Time) ([]model.LabelSet, error) {
	var opts []v1.Option
	if limit, ok := ctx.Value(seriesLimitKey{}).(int); ok && limit > 0 {
		opts = append(opts, v1.WithLimit(uint64(limit)+1))
		ctx = context.WithValue(ctx, maxBytesKey{}, int64(limit+1)*MaxBytesPerSeries)
	}
	sets, warnings, _, err := c.api.Series(ctx, matches, start, end, opts...)
	if len(warnings) > 0 {
		klog.V(2).InfoS("Prometheus series listing returned warnings", "matches", matches, "warnings", warnings)
	}
	if err != nil {
		return nil, &QueryError{Expr: strings.Join(matches, " or "), Series: true, Err: normalize(err)}
	}
	return sets, nil
}

// MaxBytesPerSeries is how much of a limited series listing's answer
// (WithSeriesLimit) one series may take: a series' labels in JSON are
// typically a few hundred bytes.
const MaxBytesPerSeries = 2 << 10

// MaxAnswerBytes bounds any answer read from Prometheus: a query for
// 10,000 pods answers about 2 MB.
const MaxAnswerBytes = 256 << 20

// ErrAnswerTooLarge is an answer longer than its bound.
var ErrAnswerTooLarge = errors.New("the answer from Prometheus is larger than the adapter reads")

type (
	seriesLimitKey struct{}
	maxBytesKey    struct{}
)

// WithSeriesLimit bounds the series listings made with ctx to limit
// series, and their answers to what limit series may take.
func WithSeriesLimit(ctx context.Context, limit int) context.Context {
	return context.WithValue(ctx, seriesLimitKey{}, limit)
}

// limitRoundTripper caps what each answer's body may carry: MaxAnswerBytes,
// or the bound its request's context sets.
type limitRoundTripper struct {
	next http.RoundTripper
}

func (l limitRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	max := int64(MaxAnswerBytes)
	if v, ok := req.Context().Value(maxBytesKey{}).(int64); ok && v < max {
		max = v
	}
	resp.Body = &cappedBody{ReadCloser: resp.Body, left: max, max: max}
	return resp, nil
}

// cappedBody fails once more than max bytes were read.
type cappedBody struct {
	io.ReadCloser
	left, max int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("%w (%d bytes)", ErrAnswerTooLarge, b.max)
	}
	return n, err
}

// QueryError is a failed call, with the query that failed.
type QueryError struct {
	Expr   string
	Series bool
	Err    error
}

// Error names the query, cut to promql.MaxInMessage bytes: at 10,000 pods a
// query is 100 KB, which would end up in HPA events and API server logs.
func (e *QueryError) Error() string {
	what := "query"
	if e.Series {
		what = "series listing"
	}
	return fmt.Sprintf("Prometheus %s %s: %v", what, ShortQuery(e.Expr), describe(e.Err))
}

// ShortQuery quotes a query for a message, cut to promql.MaxInMessage
// bytes with its full length said.
func ShortQuery(expr string) string { return promql.Short(expr) }

func (e *QueryError) Unwrap() error { return e.Err }

// Kind classifies a failure for the API's status codes.
type Kind int

// Kinds of failure.
const (
	// Unavailable: Prometheus could not be reached or failed internally.
	Unavailable Kind = iota
	// Timeout: the call did not finish before its deadline.
	Timeout
	// BadQuery: Prometheus rejected the query itself (a rule problem).
	BadQuery
	// Execution: Prometheus could not evaluate the query (too many
	// samples, many-to-many matching): a rule or size problem.
	Execution
	// Canceled: the caller went away.
	Canceled
)

// Classify tells what kind of failure err is.
func Classify(err error) Kind {
	var apiErr *v1.Error
	switch {
	case errors.Is(err, context.Canceled):
		return Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return Timeout
	case errors.As(err, &apiErr) && apiErr.Type == v1.ErrTimeout:
		return Timeout
	case errors.As(err, &apiErr) && apiErr.Type == v1.ErrBadData:
		return BadQuery
	case errors.As(err, &apiErr) && apiErr.Type == v1.ErrExec:
		return Execution
	default:
		return Unavailable
	}
}

// normalize recovers Prometheus' own error type and message from a 5xx
// reply, which client_golang reports as a server_error with the JSON body
// as detail (Prometheus answers query timeouts with 503).
func normalize(err error) error {
	var apiErr *v1.Error
	if !errors.As(err, &apiErr) || apiErr.Type != v1.ErrServer || apiErr.Detail == "" {
		return err
	}
	var body struct {
		Status    string       `json:"status"`
		ErrorType v1.ErrorType `json:"errorType"`
		Error     string       `json:"error"`
	}
	if json.Unmarshal([]byte(apiErr.Detail), &body) != nil || body.Status != "error" || body.ErrorType == "" {
		return err
	}
	return &v1.Error{Type: body.ErrorType, Msg: body.Error}
}

// describe renders v1.Error with its type, which its own Error() leaves out
// for some types.
func describe(err error) string {
	var apiErr *v1.Error
	if errors.As(err, &apiErr) {
		msg := fmt.Sprintf("%s: %s", apiErr.Type, apiErr.Msg)
		if apiErr.Detail != "" && len(apiErr.Detail) < 512 {
			msg += ": " + strings.TrimSpace(apiErr.Detail)
		}
		return msg
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer before the deadline (" + err.Error() + ")"
	}
	return err.Error()
}

// getRoundTripper turns the form-encoded POST requests client_golang sends
// into GET requests with the same parameters in the URL.
type getRoundTripper struct {
	next http.RoundTripper
}

func (g getRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPost || req.Body == nil ||
		req.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		return g.next.RoundTrip(req)
	}
	body, err := io.ReadAll(req.Body)
	_ = req.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading request body: %w", err)
	}
	get := req.Clone(req.Context())
	get.Method = http.MethodGet
	get.Body = nil
	get.GetBody = nil
	get.ContentLength = 0
	get.Header.Del("Content-Type")
	u := *req.URL
	if u.RawQuery != "" {
		u.RawQuery += "&" + string(body)
	} else {
		u.RawQuery = string(body)
	}
	get.URL = &u
	return g.next.RoundTrip(get)
}
