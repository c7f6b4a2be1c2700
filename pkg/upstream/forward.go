package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/client-go/transport"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
)

// credentialHeaders are what a caller sends that must not reach an
// upstream: its credentials, and identity headers the adapter sets itself.
var credentialHeaders = []string{"Authorization", "Cookie", "Proxy-Authorization"}

// identityPrefixes are identity headers, the caller's or a proxy's; the
// adapter writes its own.
var identityPrefixes = []string{"Impersonate-", "X-Remote-"}

// Forward sends req, authenticated and authorized by this adapter, to u as
// its caller (impersonated, with the adapter's credentials) and writes
// u's answer back unchanged. An upstream that cannot be reached answers
// 503, one slower than the set's timeout 504, each naming the upstream.
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
			pr.Out.URL.Path, pr.Out.URL.RawPath = pr.In.URL.Path, pr.In.URL.RawPath
			pr.Out.Host = u.URL.Host
			for _, h := range credentialHeaders {
				pr.Out.Header.Del(h)
			}
			for name := range pr.Out.Header {
				for _, p := range identityPrefixes {
					if strings.HasPrefix(http.CanonicalHeaderKey(name), p) {
						pr.Out.Header.Del(name)
					}
				}
			}
			impersonate(pr.Out.Header, caller)
		},
		Transport: u.client.Transport,
		ModifyResponse: func(resp *http.Response) error {
			code = resp.StatusCode
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

// impersonate writes the caller's identity as impersonation headers.
func impersonate(h http.Header, u user.Info) {
	h.Set(transport.ImpersonateUserHeader, u.GetName())
	if uid := u.GetUID(); uid != "" {
		h.Set(transport.ImpersonateUIDHeader, uid)
	}
	for _, g := range u.GetGroups() {
		if g == user.AllAuthenticated {
			continue // added by the upstream to every impersonated user
		}
		h.Add(transport.ImpersonateGroupHeader, g)
	}
	for k, vs := range u.GetExtra() {
		for _, v := range vs {
			h.Add(transport.ImpersonateUserExtraHeaderPrefix+headerKeyEscape(k), v)
		}
	}
}

// headerKeyEscape escapes an extra's key for a header name, as client-go
// does (percent-encoding what a header name cannot hold).
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
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return apierrors.NewTimeoutError(fmt.Sprintf("upstream %s (%s) did not answer in time: %v", u.Name, u.URL.Host, err), 0)
	}
	return apierrors.NewServiceUnavailable(fmt.Sprintf("upstream %s (%s) is unavailable: %v", u.Name, u.URL.Host, err))
}

// Get sends a GET of path to u as the caller of ctx (or as the adapter
// itself when ctx has none) and returns the answer: for explain.
func (s *Set) Get(ctx context.Context, u *Upstream, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL.String()+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	if caller, ok := request.UserFrom(ctx); ok {
		impersonate(req.Header, caller)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return int(unreachable(u, err, ctx).Status().Code), nil, unreachable(u, err, ctx)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
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
