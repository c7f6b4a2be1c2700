// Package frontproxy remembers which front-proxy client certificates were
// verified, so that the aggregator's certificate is checked once per
// certificate and CA bundle, not on every request.
//
// Every request the kube-apiserver aggregator forwards carries its
// front-proxy client certificate, and k8s.io/apiserver verifies that chain
// against the request-header CA on each request: one signature check per
// request (70 µs with an ECDSA P-256 CA, 34 µs with RSA-2048, on the machine
// docs/performance.md names), 13 % of the adapter's CPU at small answers.
// The aggregator's connections are long-lived and present the same
// certificate every time, so the answer can be remembered.
//
// What is remembered is exactly what crypto/x509 verification depends on:
// the certificate chain (its bytes, compared in full), the CA pool it was
// verified against (the provider's pool pointer, which changes when the CA
// bundle is reloaded) and the time: an entry stands while the wall clock is
// within the validity of every certificate of the verified chain, as
// crypto/x509 checks it, and for at most a TTL measured on the monotonic
// clock, so a step of the wall clock neither extends trust nor skips the
// check. The allowed common names and the identity headers are read on
// every request, as the library does. Failures are not remembered: a
// request whose certificate does not verify here is left to the library's
// authenticator, which reports the error.
package frontproxy

import (
	"bytes"
	"crypto/x509"
	"hash/maphash"
	"net/http"
	"slices"
	"time"

	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/group"
	"k8s.io/apiserver/pkg/authentication/request/headerrequest"
	"k8s.io/apiserver/pkg/authentication/request/union"
	"k8s.io/utils/lru"
)

const (
	// trustFor bounds how long a verified chain is trusted without being
	// verified again.
	trustFor = time.Minute
	// maxEntries bounds the memory of the cache (an LRU): a cluster has a
	// few aggregator certificates (one per API server, two while
	// rotating). Only certificates signed by the request-header CA are
	// remembered.
	maxEntries = 64
)

// WithVerifyCache returns an authenticator that first tries the
// front-proxy (request-header) authentication of rh with remembered
// verifications, then falls back to next, the authenticator the API server
// was configured with, for everything else: other client certificates,
// bearer tokens, anonymous requests, and front-proxy requests that fail here
// (next verifies them again and reports why). Users authenticated here get
// the system:authenticated group, as next adds.
func WithVerifyCache(next authenticator.Request, rh *authenticatorfactory.RequestHeaderConfig) authenticator.Request {
	if rh == nil || rh.CAContentProvider == nil || next == nil {
		return next
	}
	return withFrontProxy(newFrontProxy(rh), next)
}

func withFrontProxy(fp *frontProxy, next authenticator.Request) authenticator.Request {
	return union.New(group.NewAuthenticatedGroupAdder(fp), next)
}

type entry struct {
	chain [][]byte // the presented certificates' bytes
	roots *x509.CertPool
	// notBefore and notAfter bound the verified chain's validity, as
	// crypto/x509 checks it: on the wall clock.
	notBefore, notAfter time.Time
	// at is when the chain was verified, on the monotonic clock: the TTL
	// runs on it, whatever the wall clock does.
	at time.Duration
}

// instant is a reading of both clocks: the wall clock, against which
// certificates are valid, and the monotonic clock, on which the TTL runs.
type instant struct {
	wall time.Time
	mono time.Duration
}

// fresh reports whether the entry still stands at now: the wall clock
// within the chain's validity, and less than ttl on the monotonic clock
// since the verification.
func (e entry) fresh(now instant, ttl time.Duration) bool {
	elapsed := now.mono - e.at
	return !now.wall.Before(e.notBefore) && !now.wall.After(e.notAfter) && elapsed >= 0 && elapsed < ttl
}

type frontProxy struct {
	verifyOptions func() (x509.VerifyOptions, bool)
	allowedNames  headerrequest.StringSliceProvider
	headers       authenticator.Request
	ttl           time.Duration
	now           func() instant
	// verify is crypto/x509 verification; tests count its calls.
	verify func(*x509.Certificate, x509.VerifyOptions) ([][]*x509.Certificate, error)

	seed maphash.Seed
	// verified holds an entry per chain key, the least recently used
	// dropped past maxEntries.
	verified *lru.Cache
}

func newFrontProxy(rh *authenticatorfactory.RequestHeaderConfig) *frontProxy {
	return &frontProxy{
		verifyOptions: rh.CAContentProvider.VerifyOptions,
		allowedNames:  orEmpty(rh.AllowedClientNames),
		headers:       headerrequest.NewDynamic(orEmpty(rh.UsernameHeaders), orEmpty(rh.UIDHeaders), orEmpty(rh.GroupHeaders), orEmpty(rh.ExtraHeaderPrefixes)),
		ttl:           trustFor,
		now:           clock(time.Now()),
		verify:        func(c *x509.Certificate, o x509.VerifyOptions) ([][]*x509.Certificate, error) { return c.Verify(o) },
		seed:          maphash.MakeSeed(),
		verified:      lru.New(maxEntries),
	}
}

// clock reads the wall clock, and the monotonic clock as the time since
// start (time.Since reads start's monotonic reading).
func clock(start time.Time) func() instant {
	return func() instant { return instant{wall: time.Now(), mono: time.Since(start)} }
}

func orEmpty(p headerrequest.StringSliceProvider) headerrequest.StringSliceProvider {
	if p == nil {
		return headerrequest.StaticStringSlice(nil)
	}
	return p
}

// AuthenticateRequest answers (nil, false, nil) for anything it does not
// authenticate, so that the union goes on to the next authenticator.
func (f *frontProxy) AuthenticateRequest(req *http.Request) (*authenticator.Response, bool, error) {
	if req.TLS == nil || len(req.TLS.PeerCertificates) == 0 {
		return nil, false, nil
	}
	opts, ok := f.verifyOptions()
	if !ok || !f.chainVerified(req.TLS.PeerCertificates, opts) {
		return nil, false, nil
	}
	if allowed := f.allowedNames.Value(); len(allowed) > 0 && !slices.Contains(allowed, req.TLS.PeerCertificates[0].Subject.CommonName) {
		return nil, false, nil
	}
	return f.headers.AuthenticateRequest(req)
}

// chainVerified reports whether the chain verifies against opts, from memory
// when it was verified against the same pool and has not expired since.
func (f *frontProxy) chainVerified(certs []*x509.Certificate, opts x509.VerifyOptions) bool {
	// A fixed verification time, or intermediates from the options, are
	// not what the cache's key describes: verify every time.
	cacheable := opts.CurrentTime.IsZero() && opts.Intermediates == nil && opts.Roots != nil
	var key uint64
	now := f.now()
	if cacheable {
		key = f.chainKey(certs)
		if v, ok := f.verified.Get(key); ok {
			if e := v.(entry); e.roots == opts.Roots && e.fresh(now, f.ttl) && sameChain(e.chain, certs) {
				return true
			}
		}
	}
	if opts.Intermediates == nil && len(certs) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	chains, err := f.verify(certs[0], opts)
	if err != nil || len(chains) == 0 {
		return false
	}
	if cacheable {
		e := entry{roots: opts.Roots, notBefore: chains[0][0].NotBefore, notAfter: chains[0][0].NotAfter, at: now.mono}
		for _, c := range chains[0][1:] {
			if c.NotBefore.After(e.notBefore) {
				e.notBefore = c.NotBefore
			}
			if c.NotAfter.Before(e.notAfter) {
				e.notAfter = c.NotAfter
			}
		}
		e.chain = make([][]byte, len(certs))
		for i, c := range certs {
			e.chain[i] = c.Raw
		}
		f.verified.Add(key, e)
	}
	return true
}

// chainKey hashes a presented chain's bytes. The hash only finds the
// entry: sameChain compares the bytes themselves.
func (f *frontProxy) chainKey(certs []*x509.Certificate) uint64 {
	var h maphash.Hash
	h.SetSeed(f.seed)
	for _, c := range certs {
		maphash.WriteComparable(&h, len(c.Raw))
		_, _ = h.Write(c.Raw)
	}
	return h.Sum64()
}

func sameChain(chain [][]byte, certs []*x509.Certificate) bool {
	if len(chain) != len(certs) {
		return false
	}
	for i, c := range certs {
		if !bytes.Equal(chain[i], c.Raw) {
			return false
		}
	}
	return true
}
