package frontproxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/request/headerrequest"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
)

// t0 is the wall clock when the tests start, read once: every
// certificate's validity and every clock reading of the tests is relative
// to it, so the tests hold on any day. Certificates carry whole seconds.
var t0 = time.Now().UTC().Truncate(time.Second)

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB, name string) *ca {
	return newCAUntil(t, name, t0.Add(24*time.Hour))
}

func newCAUntil(t testing.TB, name string, notAfter time.Time) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: t0.Add(-time.Hour), NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return &ca{cert: c, key: key, pool: pool}
}

func (c *ca) leaf(t testing.TB, cn string, notAfter time.Time) *x509.Certificate {
	return c.sign(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, NotBefore: t0.Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, nil)
}

// intermediate returns a CA signed by c.
func (c *ca) intermediate(t testing.TB, name string) *ca {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert := c.sign(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, key)
	return &ca{cert: cert, key: key}
}

// sign issues tmpl, for key or a new one.
func (c *ca) sign(t testing.TB, tmpl *x509.Certificate, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// caProvider is a CA bundle that can be swapped, as a reloaded
// ConfigMap or file is.
type caProvider struct{ pool atomic.Pointer[x509.CertPool] }

func (p *caProvider) Name() string                             { return "test" }
func (p *caProvider) CurrentCABundleContent() []byte           { return nil }
func (p *caProvider) AddListener(dynamiccertificates.Listener) {}
func (p *caProvider) VerifyOptions() (x509.VerifyOptions, bool) {
	pool := p.pool.Load()
	if pool == nil {
		return x509.VerifyOptions{}, false
	}
	return x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, true
}

// recorder stands for the API server's own authenticator.
type recorder struct{ calls int }

func (r *recorder) AuthenticateRequest(*http.Request) (*authenticator.Response, bool, error) {
	r.calls++
	return nil, false, errors.New("next authenticator")
}

type fixture struct {
	fp       *frontProxy
	auth     authenticator.Request
	next     *recorder
	provider *caProvider
	verifies int
	now      instant // both clocks, set by the test
}

// after sets both clocks d after t0, as time passes when nobody steps the
// wall clock.
func (f *fixture) after(d time.Duration) { f.now = instant{wall: t0.Add(d), mono: d} }

func newFixture(t testing.TB, frontCA *ca) *fixture {
	t.Helper()
	f := &fixture{next: &recorder{}, provider: &caProvider{}, now: instant{wall: t0}}
	f.provider.pool.Store(frontCA.pool)
	rh := &authenticatorfactory.RequestHeaderConfig{
		UsernameHeaders:     headerrequest.StaticStringSlice{"X-Remote-User"},
		GroupHeaders:        headerrequest.StaticStringSlice{"X-Remote-Group"},
		UIDHeaders:          headerrequest.StaticStringSlice{"X-Remote-Uid"},
		ExtraHeaderPrefixes: headerrequest.StaticStringSlice{"X-Remote-Extra-"},
		CAContentProvider:   f.provider,
		AllowedClientNames:  headerrequest.StaticStringSlice{"front-proxy-client"},
	}
	f.fp = newFrontProxy(rh)
	f.fp.now = func() instant { return f.now }
	f.fp.verify = func(c *x509.Certificate, o x509.VerifyOptions) ([][]*x509.Certificate, error) {
		f.verifies++
		o.CurrentTime = f.now.wall
		return c.Verify(o)
	}
	f.auth = withFrontProxy(f.fp, f.next)
	return f
}

func request(certs []*x509.Certificate, user string, groups ...string) *http.Request {
	req, _ := http.NewRequest(http.MethodGet, "https://adapter/apis/custom.metrics.k8s.io/v1beta2", nil)
	if certs != nil {
		req.TLS = &tls.ConnectionState{PeerCertificates: certs}
	}
	if user != "" {
		req.Header.Set("X-Remote-User", user)
	}
	for _, g := range groups {
		req.Header.Add("X-Remote-Group", g)
	}
	return req
}

func wantUser(t *testing.T, auth authenticator.Request, req *http.Request, name string, groups ...string) {
	t.Helper()
	resp, ok, err := auth.AuthenticateRequest(req)
	if err != nil || !ok {
		t.Fatalf("not authenticated: ok=%v err=%v", ok, err)
	}
	if resp.User.GetName() != name || !slices.Equal(resp.User.GetGroups(), groups) {
		t.Fatalf("user %q groups %v, want %q %v", resp.User.GetName(), resp.User.GetGroups(), name, groups)
	}
	if req.Header.Get("X-Remote-User") != "" {
		t.Fatal("the identity headers were left on the request")
	}
}

// wantAlice checks a request presenting cert as alice is authenticated.
func wantAlice(t *testing.T, f *fixture, cert *x509.Certificate) {
	t.Helper()
	wantUser(t, f.auth, request([]*x509.Certificate{cert}, "alice"), "alice", user.AllAuthenticated)
}

func wantNext(t *testing.T, f *fixture, req *http.Request) {
	t.Helper()
	before := f.next.calls
	_, ok, err := f.auth.AuthenticateRequest(req)
	if ok || err == nil || f.next.calls != before+1 {
		t.Fatalf("want the request left to the next authenticator: ok=%v err=%v calls %d→%d", ok, err, before, f.next.calls)
	}
}

func TestVerifiedOncePerChain(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	cert := frontCA.leaf(t, "front-proxy-client", t0.Add(12*time.Hour))
	for i := range 100 {
		f.after(time.Duration(i) * 100 * time.Millisecond)
		wantUser(t, f.auth, request([]*x509.Certificate{cert}, "system:serviceaccount:kube-system:horizontal-pod-autoscaler", "system:serviceaccounts"),
			"system:serviceaccount:kube-system:horizontal-pod-autoscaler", "system:serviceaccounts", user.AllAuthenticated)
	}
	if f.verifies != 1 {
		t.Fatalf("%d verifications for 100 requests with one certificate in 10 s, want 1", f.verifies)
	}
	if f.next.calls != 0 {
		t.Fatalf("the next authenticator was called %d times", f.next.calls)
	}
	// A second aggregator (another API server) has its own entry.
	other := frontCA.leaf(t, "front-proxy-client", t0.Add(12*time.Hour))
	wantAlice(t, f, other)
	wantUser(t, f.auth, request([]*x509.Certificate{other}, "bob"), "bob", user.AllAuthenticated)
	if f.verifies != 2 {
		t.Fatalf("%d verifications, want 2", f.verifies)
	}
}

func TestTTLBoundsTrust(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	cert := frontCA.leaf(t, "front-proxy-client", t0.Add(12*time.Hour))
	wantAlice(t, f, cert)
	f.after(59 * time.Second)
	wantAlice(t, f, cert)
	f.after(61 * time.Second)
	wantAlice(t, f, cert)
	if f.verifies != 2 {
		t.Fatalf("%d verifications, want 2 (the second after the TTL)", f.verifies)
	}
}

// Outside the validity of any certificate of the chain, a remembered
// verification does not stand: the chain is verified again, fails, and is
// left to the next authenticator.
func TestVerifiedAgainOutsideTheChainsValidity(t *testing.T) {
	for name, tc := range map[string]struct {
		caUntil, leafUntil time.Time
		at                 instant
	}{
		"the certificate expired": {caUntil: t0.Add(24 * time.Hour), leafUntil: t0.Add(30 * time.Second), at: instant{wall: t0.Add(31 * time.Second), mono: 31 * time.Second}},
		"the CA expired":          {caUntil: t0.Add(30 * time.Second), leafUntil: t0.Add(12 * time.Hour), at: instant{wall: t0.Add(31 * time.Second), mono: 31 * time.Second}},
		// A wall clock stepped back before NotBefore (t0-1h), one second
		// after the verification.
		"the clock stepped back": {caUntil: t0.Add(24 * time.Hour), leafUntil: t0.Add(12 * time.Hour), at: instant{wall: t0.Add(-2 * time.Hour), mono: time.Second}},
	} {
		t.Run(name, func(t *testing.T) {
			frontCA := newCAUntil(t, "front-proxy-ca", tc.caUntil)
			f := newFixture(t, frontCA)
			cert := frontCA.leaf(t, "front-proxy-client", tc.leafUntil)
			wantAlice(t, f, cert)
			f.now = tc.at
			wantNext(t, f, request([]*x509.Certificate{cert}, "alice"))
			if f.verifies != 2 {
				t.Fatalf("%d verifications, want 2", f.verifies)
			}
		})
	}
}

// The identity is the request-header authenticator's: UID and extra
// headers too, and every identity header is removed from the request.
func TestIdentityFromTheHeaders(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	req := request([]*x509.Certificate{frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour))}, "alice", "team-a")
	req.Header.Set("X-Remote-Uid", "uid-1")
	req.Header.Add("X-Remote-Extra-Scopes", "read")
	req.Header.Add("X-Remote-Extra-Scopes", "write")
	resp, ok, err := f.auth.AuthenticateRequest(req)
	if err != nil || !ok {
		t.Fatalf("not authenticated: ok=%v err=%v", ok, err)
	}
	u := resp.User
	if u.GetName() != "alice" || u.GetUID() != "uid-1" || !slices.Equal(u.GetGroups(), []string{"team-a", user.AllAuthenticated}) ||
		!slices.Equal(u.GetExtra()["scopes"], []string{"read", "write"}) {
		t.Fatalf("user %q uid %q groups %v extra %v", u.GetName(), u.GetUID(), u.GetGroups(), u.GetExtra())
	}
	for _, h := range []string{"X-Remote-User", "X-Remote-Uid", "X-Remote-Group", "X-Remote-Extra-Scopes"} {
		if req.Header.Get(h) != "" {
			t.Errorf("%s left on the request", h)
		}
	}
}

// What this package does not authenticate is the next authenticator's to
// answer, unchanged: a bearer token's user, for one.
func TestNextAuthenticatorsAnswer(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	token := authenticator.RequestFunc(func(*http.Request) (*authenticator.Response, bool, error) {
		return &authenticator.Response{User: &user.DefaultInfo{Name: "token-user", Groups: []string{user.AllAuthenticated}}}, true, nil
	})
	auth := withFrontProxy(f.fp, token)
	wantUser(t, auth, request(nil, ""), "token-user", user.AllAuthenticated)
}

// The TTL runs on the monotonic clock: a step of the wall clock within
// the chain's validity neither ends nor extends it, and a step past
// NotAfter (or back before NotBefore) ends it at once.
func TestTTLOnTheMonotonicClock(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca") // valid from t0-1h to t0+24h
	cert := frontCA.leaf(t, "front-proxy-client", t0.Add(12*time.Hour))
	for _, tc := range []struct {
		name       string
		then       instant // the second request, after one verified at t0
		remembered bool    // whether the second request is served from memory
	}{
		{name: "the wall clock stepped two hours forward, 30 s after the verification", then: instant{wall: t0.Add(2 * time.Hour), mono: 30 * time.Second}, remembered: true},
		{name: "the wall clock stepped 50 minutes back, 30 s after the verification", then: instant{wall: t0.Add(-50 * time.Minute), mono: 30 * time.Second}, remembered: true},
		{name: "the wall clock stepped back by the TTL, 61 s after the verification", then: instant{wall: t0.Add(time.Second), mono: 61 * time.Second}},
		{name: "the wall clock stepped past the certificate's NotAfter, 1 s after the verification", then: instant{wall: t0.Add(13 * time.Hour), mono: time.Second}},
		{name: "the wall clock stepped back before NotBefore, 1 s after the verification", then: instant{wall: t0.Add(-2 * time.Hour), mono: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, frontCA)
			wantAlice(t, f, cert)
			f.now = tc.then
			want := 1
			if !tc.remembered {
				want = 2
			}
			_, _, _ = f.auth.AuthenticateRequest(request([]*x509.Certificate{cert}, "alice"))
			if f.verifies != want {
				t.Fatalf("%d verifications, want %d", f.verifies, want)
			}
		})
	}
	// The clock the adapter runs with reads the monotonic clock from its
	// start.
	now := clock(time.Now().Add(-time.Hour))()
	if now.mono < time.Hour || now.wall.IsZero() {
		t.Fatalf("clock read %v on the monotonic clock, want at least 1h since its start", now.mono)
	}
}

// An entry is bounded by the latest NotBefore and the earliest NotAfter
// of every certificate of the verified chain, the root included.
func TestEntrySpansTheWholeChain(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca") // valid from t0-1h to t0+24h
	f := newFixture(t, frontCA)
	cert := frontCA.sign(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "front-proxy-client"}, NotBefore: t0.Add(-2 * time.Hour), NotAfter: t0.Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, nil)
	wantAlice(t, f, cert)
	v, _ := f.fp.verified.Get(f.fp.chainKey([]*x509.Certificate{cert}))
	e, _ := v.(entry)
	if !e.notBefore.Equal(frontCA.cert.NotBefore) || !e.notAfter.Equal(frontCA.cert.NotAfter) {
		t.Fatalf("entry valid from %s to %s, want the CA's %s to %s", e.notBefore, e.notAfter, frontCA.cert.NotBefore, frontCA.cert.NotAfter)
	}
}

func TestServerCertificateIsNotAClientCertificate(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	server := frontCA.sign(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "front-proxy-client"}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, nil)
	wantNext(t, f, request([]*x509.Certificate{server}, "alice"))
	wantNext(t, f, request([]*x509.Certificate{server}, "alice"))
	if f.fp.verified.Len() != 0 {
		t.Fatal("a failed verification was remembered")
	}
}

// A leaf signed by an intermediate verifies with the intermediate the
// client presents, and the entry is for that whole chain.
func TestIntermediates(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	mid := frontCA.intermediate(t, "front-proxy-intermediate")
	cert := mid.leaf(t, "front-proxy-client", t0.Add(12*time.Hour))
	wantNext(t, f, request([]*x509.Certificate{cert}, "alice")) // without its intermediate
	wantUser(t, f.auth, request([]*x509.Certificate{cert, mid.cert}, "alice"), "alice", user.AllAuthenticated)
	wantUser(t, f.auth, request([]*x509.Certificate{cert, mid.cert}, "alice"), "alice", user.AllAuthenticated)
	if f.verifies != 2 {
		t.Fatalf("%d verifications, want 2 (the chain without its intermediate, then the whole chain once)", f.verifies)
	}
	// Another intermediate of another CA is another chain, verified on
	// its own (and refused).
	stranger := newCA(t, "other-ca").intermediate(t, "front-proxy-intermediate")
	wantNext(t, f, request([]*x509.Certificate{cert, stranger.cert}, "alice"))
}

// Many requests on a few chains at once: run under -race (make unit).
func TestConcurrentRequests(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	f.fp.verify = func(c *x509.Certificate, o x509.VerifyOptions) ([][]*x509.Certificate, error) {
		o.CurrentTime = t0
		return c.Verify(o)
	}
	certs := []*x509.Certificate{
		frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour)),
		frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour)),
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				req := request([]*x509.Certificate{certs[(g+i)%2]}, "alice")
				resp, ok, err := f.auth.AuthenticateRequest(req)
				if err != nil || !ok || resp.User.GetName() != "alice" {
					errs <- fmt.Errorf("request %d of goroutine %d: ok=%v: %w", i, g, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestReloadedCABundle(t *testing.T) {
	oldCA, newCA := newCA(t, "old-front-proxy-ca"), newCA(t, "new-front-proxy-ca")
	f := newFixture(t, oldCA)
	oldCert, newCert := oldCA.leaf(t, "front-proxy-client", t0.Add(12*time.Hour)), newCA.leaf(t, "front-proxy-client", t0.Add(12*time.Hour))
	wantAlice(t, f, oldCert)
	wantNext(t, f, request([]*x509.Certificate{newCert}, "alice"))

	f.provider.pool.Store(newCA.pool)
	wantNext(t, f, request([]*x509.Certificate{oldCert}, "alice"))
	wantAlice(t, f, newCert)
}

func TestLeftToTheNextAuthenticator(t *testing.T) {
	frontCA, clientCA := newCA(t, "front-proxy-ca"), newCA(t, "client-ca")
	f := newFixture(t, frontCA)
	for name, req := range map[string]*http.Request{
		"no TLS":                    request(nil, "alice"),
		"no client certificate":     request([]*x509.Certificate{}, "alice"),
		"another CA's certificate":  request([]*x509.Certificate{clientCA.leaf(t, "front-proxy-client", t0.Add(time.Hour))}, "alice"),
		"a common name not allowed": request([]*x509.Certificate{frontCA.leaf(t, "someone-else", t0.Add(time.Hour))}, "alice"),
		"no identity header":        request([]*x509.Certificate{frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour))}, ""),
	} {
		t.Run(name, func(t *testing.T) { wantNext(t, f, req) })
	}
	// A common name no longer allowed is refused even once verified.
	allowed := headerrequest.StaticStringSlice{"front-proxy-client"}
	names := &allowed
	f.fp.allowedNames = headerrequest.StringSliceProviderFunc(func() []string { return *names })
	cert := frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour))
	wantAlice(t, f, cert)
	*names = headerrequest.StaticStringSlice{"another-proxy"}
	wantNext(t, f, request([]*x509.Certificate{cert}, "alice"))
	// No CA bundle loaded yet: nothing is authenticated here.
	f.provider.pool.Store(nil)
	wantNext(t, f, request([]*x509.Certificate{cert}, "alice"))
}

// The cache holds at most maxEntries chains, and drops the least recently
// used: the aggregator's certificate, presented on every request, stays
// while others come and go.
func TestBounded(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	aggregator := frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour))
	wantAlice(t, f, aggregator)
	for i := range maxEntries + 10 {
		cert := frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour))
		wantAlice(t, f, cert)
		wantAlice(t, f, aggregator)
		if n := f.fp.verified.Len(); n > maxEntries {
			t.Fatalf("after %d certificates, %d entries, want at most %d", i+1, n, maxEntries)
		}
	}
	if _, ok := f.fp.verified.Get(f.fp.chainKey([]*x509.Certificate{aggregator})); !ok {
		t.Error("the certificate presented on every request was dropped")
	}
	if want := 1 + maxEntries + 10; f.verifies != want {
		t.Errorf("%d verifications, want %d: one per certificate, the aggregator's once", f.verifies, want)
	}
}

func TestNothingToCache(t *testing.T) {
	next := &recorder{}
	if got := WithVerifyCache(next, nil); got != next {
		t.Fatal("without request-header authentication the authenticator must be left as it is")
	}
}

func TestAnEntryIsForItsOwnChain(t *testing.T) {
	frontCA := newCA(t, "front-proxy-ca")
	f := newFixture(t, frontCA)
	a := frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour))
	b := frontCA.leaf(t, "front-proxy-client", t0.Add(time.Hour))
	wantAlice(t, f, a)
	// As if b's hash led to a's entry: b is still verified on its own.
	ea, _ := f.fp.verified.Get(f.fp.chainKey([]*x509.Certificate{a}))
	f.fp.verified.Add(f.fp.chainKey([]*x509.Certificate{b}), ea)
	wantAlice(t, f, b)
	if f.verifies != 2 {
		t.Fatalf("%d verifications, want 2", f.verifies)
	}
}

// BenchmarkFrontProxy compares a request authenticated from memory with
// one verified each time, as the library does.
func BenchmarkFrontProxy(b *testing.B) {
	frontCA := newCA(b, "front-proxy-ca")
	cert := frontCA.leaf(b, "front-proxy-client", time.Now().Add(time.Hour))
	for name, ttl := range map[string]time.Duration{"remembered": time.Hour, "verified every time": time.Nanosecond} {
		b.Run(name, func(b *testing.B) {
			f := newFixture(b, frontCA)
			f.fp.ttl = ttl
			f.fp.now = clock(time.Now())
			for b.Loop() {
				req := request([]*x509.Certificate{cert}, "alice")
				if _, ok, err := f.auth.AuthenticateRequest(req); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}
