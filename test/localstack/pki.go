package localstack

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI holds the files of the local cluster's certificates, all under Dir.
type PKI struct {
	Dir string
}

// Path returns the path of a PKI file, e.g. Path("ca.crt").
func (p PKI) Path(name string) string { return filepath.Join(p.Dir, name) }

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// AdapterServiceDNS is the name the aggregator verifies the adapter's
// serving certificate against: <service>.<namespace>.svc.
const AdapterServiceDNS = "custom-metrics-apiserver.custom-metrics.svc"

// GeneratePKI writes two CAs (cluster and front-proxy), serving
// certificates for the API server and the adapter, client certificates for
// the admin, the controller manager, the adapter, Prometheus and the
// aggregator's front proxy, and the service-account key pair.
func GeneratePKI(dir string) (PKI, error) {
	p := PKI{Dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	clusterCA, err := newCA("local-kubernetes-ca")
	if err != nil {
		return p, err
	}
	proxyCA, err := newCA("local-front-proxy-ca")
	if err != nil {
		return p, err
	}
	if err := writeCert(p.Path("ca.crt"), clusterCA.cert.Raw); err != nil {
		return p, err
	}
	if err := writeCert(p.Path("front-proxy-ca.crt"), proxyCA.cert.Raw); err != nil {
		return p, err
	}
	loop := []net.IP{net.ParseIP("127.0.0.1")}
	leaves := []struct {
		name   string
		ca     ca
		cn     string
		orgs   []string
		server bool
		dns    []string
		ips    []net.IP
	}{
		{name: "apiserver", ca: clusterCA, cn: "kube-apiserver", server: true,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}},
		{name: "adapter-serving", ca: clusterCA, cn: "custom-metrics-apiserver", server: true,
			dns: []string{"localhost", AdapterServiceDNS, AdapterServiceDNS + ".cluster.local"}, ips: loop},
		{name: "admin", ca: clusterCA, cn: "kubernetes-admin", orgs: []string{"system:masters"}},
		{name: "kube-controller-manager", ca: clusterCA, cn: "system:kube-controller-manager"},
		{name: "apiserver-kubelet-client", ca: clusterCA, cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}},
		// The adapter and Prometheus authenticate as the service accounts
		// the manifests create, so the manifests' RBAC is what they get.
		{name: "adapter-client", ca: clusterCA, cn: "system:serviceaccount:custom-metrics:custom-metrics-apiserver",
			orgs: []string{"system:serviceaccounts", "system:serviceaccounts:custom-metrics"}},
		{name: "prometheus-client", ca: clusterCA, cn: "system:serviceaccount:monitoring:prometheus",
			orgs: []string{"system:serviceaccounts", "system:serviceaccounts:monitoring"}},
		{name: "front-proxy-client", ca: proxyCA, cn: "front-proxy-client"},
	}
	for _, l := range leaves {
		if err := writeLeaf(p, l.name, l.ca, l.cn, l.orgs, l.server, l.dns, l.ips); err != nil {
			return p, fmt.Errorf("%s certificate: %w", l.name, err)
		}
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return p, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return p, err
	}
	if err := writePEM(p.Path("sa.key"), "PRIVATE KEY", keyDER, 0o600); err != nil {
		return p, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return p, err
	}
	return p, writePEM(p.Path("sa.pub"), "PUBLIC KEY", pubDER, 0o644)
}

func newCA(cn string) (ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return ca{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return ca{}, err
	}
	cert, err := x509.ParseCertificate(der)
	return ca{cert: cert, key: key}, err
}

func writeLeaf(p PKI, name string, issuer ca, cn string, orgs []string, server bool, dns []string, ips []net.IP) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer.cert, &key.PublicKey, issuer.key)
	if err != nil {
		return err
	}
	if err := writeCert(p.Path(name+".crt"), der); err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(p.Path(name+".key"), "EC PRIVATE KEY", keyDER, 0o600)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func writeCert(path string, der []byte) error { return writePEM(path, "CERTIFICATE", der, 0o644) }

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}
