package localstack

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
)

// TLSFiles are the PEM files of a CA of its own, a serving certificate it
// signed for 127.0.0.1 and localhost, and a client certificate it signed:
// what a test needs to run a server over TLS with client certificates.
type TLSFiles struct {
	CA         string
	ServerCert string
	ServerKey  string
	ClientCert string
	ClientKey  string
}

// GenerateTLSFiles writes a new CA and its serving and client
// certificates to dir, as <name>-ca.crt, <name>-server.{crt,key} and
// <name>-client.{crt,key}. Each call makes a different CA, so the files of
// one name are not trusted by the server of another.
func GenerateTLSFiles(dir, name string) (TLSFiles, error) {
	p := PKI{Dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return TLSFiles{}, err
	}
	c, err := newCA(name + "-ca")
	if err != nil {
		return TLSFiles{}, err
	}
	if err := writeCert(p.Path(name+"-ca.crt"), c.cert.Raw); err != nil {
		return TLSFiles{}, err
	}
	if err := writeLeaf(p, name+"-server", c, name, nil, true,
		[]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		return TLSFiles{}, fmt.Errorf("%s serving certificate: %w", name, err)
	}
	if err := writeLeaf(p, name+"-client", c, name+"-client", nil, false, nil, nil); err != nil {
		return TLSFiles{}, fmt.Errorf("%s client certificate: %w", name, err)
	}
	return TLSFiles{
		CA:         p.Path(name + "-ca.crt"),
		ServerCert: p.Path(name + "-server.crt"),
		ServerKey:  p.Path(name + "-server.key"),
		ClientCert: p.Path(name + "-client.crt"),
		ClientKey:  p.Path(name + "-client.key"),
	}, nil
}

// ClientTLSConfig trusts the CA and presents the client certificate.
func (f TLSFiles) ClientTLSConfig() (*tls.Config, error) {
	pool, cert, err := f.load(f.ClientCert, f.ClientKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// ServerTLSConfig serves the serving certificate and takes only clients
// with a certificate of the CA.
func (f TLSFiles) ServerTLSConfig() (*tls.Config, error) {
	pool, cert, err := f.load(f.ServerCert, f.ServerKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// load reads the CA as a pool, and a certificate and its key.
func (f TLSFiles) load(certFile, keyFile string) (*x509.CertPool, tls.Certificate, error) {
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, tls.Certificate{}, fmt.Errorf("%s holds no PEM certificate", f.CA)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	return pool, cert, err
}
