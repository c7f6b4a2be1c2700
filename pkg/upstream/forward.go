package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
)

// identityHeaders name what a caller (or a proxy before it) sends that
// must not reach an upstream: credentials, and the headers that carry an
// identity, which the adapter writes itself. They are matched without
// regard to case, and deleted by the key they were stored under.
var (
	credentialHeaders = []string{"Authorization", "Cookie", "Proxy-Authorization"}
	identityPrefixes  = []string{"Impersonate-", "X-Remote-"}
)

// The headers that carry the caller to an upstream, as the aggregator
// carries a request's user to an extension API server (the API server's
// --requestheader-*-headers; the upstream's defaults).
const (
	RemoteUserHeader        = "X-Remote-User"
	RemoteGroupHeader       = "X-Remote-Group"
	RemoteExtraHeaderPrefix = "X-Remote-Extra-"
)

// stripIdentity deletes every credential and identity header of h,
// whatever the case of its key.
func stripIdentity(h http.Header) {
	for name := range h {
		canonical := http.CanonicalHeaderKey(name)
		drop := slices.Contains(credentialHeaders, canonical)
		for _, p := range identityPrefixes {
			drop = drop || strings.HasPrefix(canonical, p)
		}
		if drop {
			delete(h, name) // by the stored key: Del would canonicalise it
		}
	}
}

// Forward sends req, authenticated and authorized by this adapter, to u as
// its caller (in the X-Remote-* headers, with the forwarding certificate)
// and writes u's answer back: its status, body and content type. An
// upstream that cannot be reached answers 503, one slower than the set's
// timeout 504, one whose answer is larger than MaxAnswerBytes 502, each
// naming the upstream.
func (s *Set) Forward(u *Upstream, api string, w http.ResponseWriter, req *http.Request) {
	caller, ok := request.UserFrom(req.Context())
	if !ok {
		apistatus.Write(w, req, apierrors.NewUnauthorized("no user to forward the request as"))
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), s.timeout)
	defer cancel()
	start := time.Now()
	code := 0
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u.URL)
			// The path as the filters parsed and authorized it, escaped
			// anew: an encoded slash in the caller's path is a separator
			// here too, never a different path at the upstream.
			pr.Out.URL.Path, pr.Out.URL.RawPath = pr.In.URL.Path, ""
			pr.Out.Host = u.URL.Host
			stripIdentity(pr.Out.Header)
			remoteUser(pr.Out.Header, caller)
		},
		Transport: u.client.Transport,
		ModifyResponse: func(resp *http.Response) error {
			code = resp.StatusCode
			body, err := readAtMost(resp.Body, MaxAnswerBytes)
			_ = resp.Body.Close()
			if err != nil {
				return err
			}
			kept := http.Header{}
			for _, h := range []string{"Content-Type", "Content-Encoding"} {
				if v := resp.Header.Get(h); v != "" {
					kept.Set(h, v)
				}
			}
			resp.Header, resp.Trailer = kept, nil
			resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			status := unreachable(u, err, ctx)
			code = int(status.Status().Code)
			apistatus.Write(w, r, status)
		},
	}
	proxy.ServeHTTP(w, req.WithContext(ctx))
	took := time.Since(start)
	observeForward(u.Name, api, code, took)
	if v := klog.V(2); v.Enabled() {
		v.InfoS("Forwarded a request to an upstream", "upstream", u.Name, "path", req.URL.Path, "user", caller.GetName(), "code", code, "duration", took)
	}
}

// remoteUser writes the caller's identity as the front proxy's headers.
func remoteUser(h http.Header, u user.Info) {
	h.Set(RemoteUserHeader, u.GetName())
	for _, g := range u.GetGroups() {
		if g == user.AllAuthenticated {
			continue // added by the upstream to every authenticated user
		}
		h.Add(RemoteGroupHeader, g)
	}
	for k, vs := range u.GetExtra() {
		for _, v := range vs {
			h.Add(RemoteExtraHeaderPrefix+headerKeyEscape(k), v)
		}
	}
}

// headerKeyEscape escapes an extra's key for a header name, as the
// aggregator does (percent-encoding what a header name cannot hold).
func headerKeyEscape(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c == '-' || c == '_' || c == '.' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// unreachable is the status of a request u did not answer.
func unreachable(u *Upstream, err error, ctx context.Context) *apierrors.StatusError {
	if errors.Is(err, errTooLarge) {
		return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: http.StatusBadGateway, Reason: metav1.StatusReasonInternalError,
			Message: fmt.Sprintf("upstream %s (%s) answered too much: %v", u.Name, u.URL.Host, err)}}
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return apierrors.NewTimeoutError(fmt.Sprintf("upstream %s (%s) did not answer in time: %v", u.Name, u.URL.Host, err), 0)
	}
	return apierrors.NewServiceUnavailable(fmt.Sprintf("upstream %s (%s) is unavailable: %v", u.Name, u.URL.Host, err))
}

// Get sends a GET of path to u as the caller of ctx (or as the adapter
// itself, the forwarding certificate's user, when ctx has none) and
// returns the answer, at most MaxAnswerBytes of it: for explain.
func (s *Set) Get(ctx context.Context, u *Upstream, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL.String()+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	if caller, ok := request.UserFrom(ctx); ok {
		remoteUser(req.Header, caller)
	} else {
		u.asAdapter(req.Header)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return int(unreachable(u, err, ctx).Status().Code), nil, unreachable(u, err, ctx)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := readAtMost(resp.Body, MaxAnswerBytes)
	return resp.StatusCode, body, err
}

// codeClass is an answer's status for the metrics: "200", "404", "503".
func codeClass(code int) string {
	if code == 0 {
		return "none"
	}
	return strconv.Itoa(code)
}

func observeForward(name, api string, code int, d time.Duration) {
	metrics.ObserveForward(name, api, codeClass(code), d)
}

func observeDiscovery(name, group string, err error) {
	if err == nil {
		metrics.ObserveUpstreamDiscovery(name, group, time.Now())
	}
}
