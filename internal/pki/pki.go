// Package pki is the certificate authority of a podnet cluster's
// datastore: the embedding agent creates the CA on first start and issues
// from it the embedded etcd server's certificate (serving clients and its
// peer), its own client certificate and, through the join endpoint, the
// client certificates of the nodes that join. Keys are ECDSA P-256; every
// file is written atomically, private keys with mode 0600. Only the
// standard library's crypto is used.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Validity of what the CA issues. A leaf is reissued at start when less
// than RenewBefore of its validity remains.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 365 * 24 * time.Hour
	RenewBefore  = 30 * 24 * time.Hour
)

// File names under a PKI directory.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
	ClientCertFile = "client.crt"
	ClientKeyFile  = "client.key"
)

// CA is the cluster's certificate authority.
type CA struct {
	// Cert is the CA certificate, PEM its encoding.
	Cert *x509.Certificate
	PEM  []byte
	key  crypto.Signer
}

// LoadOrCreateCA loads the CA from dir (ca.crt, ca.key), or creates it
// there, with dir, when there is none.
func LoadOrCreateCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	cert, key, err := loadPair(certPath, keyPath)
	switch {
	case err == nil:
		if !cert.IsCA {
			return nil, fmt.Errorf("pki: %s is not a CA certificate", certPath)
		}
		return &CA{Cert: cert, PEM: encodeCert(cert.Raw), key: key}, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	key, err = newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "podnet datastore CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA: %w", err)
	}
	// The key first: a certificate without its key is not a CA.
	if err := writeKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := WriteFile(certPath, encodeCert(der), 0o644); err != nil {
		return nil, err
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return &CA{Cert: cert, PEM: encodeCert(der), key: key}, nil
}

// Hash is the pin of the CA certificate: "sha256:" and the hex SHA-256 of
// its DER encoding.
func (ca *CA) Hash() string { return CertHash(ca.Cert) }

// CertHash is "sha256:" and the hex SHA-256 of c's DER encoding.
func CertHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Pool is a certificate pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// EnsureServer makes sure dir holds a server certificate of the CA
// (server.crt, server.key) valid for every host (IP addresses or DNS
// names) and for a while yet, issuing a new one otherwise. It is good for
// client and server authentication, as an etcd member's peer certificate
// must be.
func (ca *CA) EnsureServer(dir string, hosts []string) (certPath, keyPath string, err error) {
	var ips []net.IP
	var names []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			names = append(names, h)
		}
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "podnet datastore server"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: ips,
		DNSNames:    names,
	}
	return ca.ensureLeaf(dir, ServerCertFile, ServerKeyFile, tmpl, func(c *x509.Certificate) bool {
		for _, h := range hosts {
			if c.VerifyHostname(h) != nil {
				return false
			}
		}
		return slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	})
}

// EnsureClient makes sure dir holds a client certificate of the CA for
// name (client.crt, client.key), issuing a new one otherwise (dir is
// created, 0700, when missing).
func (ca *CA) EnsureClient(dir, name string) (certPath, keyPath string, err error) {
	tmpl := clientTemplate(name)
	return ca.ensureLeaf(dir, ClientCertFile, ClientKeyFile, tmpl, func(c *x509.Certificate) bool {
		return c.Subject.CommonName == name
	})
}

// ensureLeaf keeps dir's certFile/keyFile when the CA signed the
// certificate, it is valid for RenewBefore still and fits; else it issues
// tmpl with a new key.
func (ca *CA) ensureLeaf(dir, certFile, keyFile string, tmpl *x509.Certificate, fits func(*x509.Certificate) bool) (string, string, error) {
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	cert, _, err := loadPair(certPath, keyPath)
	if err == nil && ca.Valid(cert) == nil && fits(cert) {
		return certPath, keyPath, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("pki: %w", err)
	}
	key, err := newKey()
	if err != nil {
		return "", "", err
	}
	der, err := ca.sign(tmpl, key.Public())
	if err != nil {
		return "", "", err
	}
	if err := writeKey(keyPath, key); err != nil {
		return "", "", err
	}
	if err := WriteFile(certPath, encodeCert(der), 0o644); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// Valid tells why c is not a certificate of the CA valid for RenewBefore
// still (nil when it is).
func (ca *CA) Valid(c *x509.Certificate) error {
	if err := c.CheckSignatureFrom(ca.Cert); err != nil {
		return fmt.Errorf("pki: %q not signed by the cluster CA: %w", c.Subject.CommonName, err)
	}
	if time.Until(c.NotAfter) < RenewBefore {
		return fmt.Errorf("pki: %q expires %s", c.Subject.CommonName, c.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// SignClientCSR issues a client certificate for the public key of a
// PEM-encoded certificate request, whose signature must be valid: the
// certificate is for client authentication only and its common name is
// name, whatever the request asks for. It returns the PEM certificate.
func (ca *CA) SignClientCSR(csrPEM []byte, name string) ([]byte, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("pki: no PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	der, err := ca.sign(clientTemplate(name), csr.PublicKey)
	if err != nil {
		return nil, err
	}
	return encodeCert(der), nil
}

func clientTemplate(name string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"podnet:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// sign issues tmpl (a leaf) for pub, valid LeafValidity from now.
func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, error) {
	var err error
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(LeafValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("pki: issue %q: %w", tmpl.Subject.CommonName, err)
	}
	return der, nil
}

// NewCSR returns a new private key (PEM) and a certificate request for it
// (PEM) naming name.
func NewCSR(name string) (keyPEM, csrPEM []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParseCert parses the first PEM certificate of b.
func ParseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("pki: no PEM certificate")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return c, nil
}

// ReadCert reads the PEM certificate at path.
func ReadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	c, err := ParseCert(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// WriteFile writes data to path atomically (a temporary file renamed over
// it) with mode perm.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

// loadPair reads a PEM certificate and its PEM private key; the error
// wraps os.ErrNotExist when either file is missing.
func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := ReadCert(certPath)
	if err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, nil, fmt.Errorf("pki: %s: no PEM key", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("pki: %s: not a signing key", keyPath)
	}
	return cert, signer, nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	return k, nil
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func writeKey(path string, k crypto.Signer) error {
	b, err := encodeKey(k)
	if err != nil {
		return err
	}
	return WriteFile(path, b, 0o600)
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// serial is a random 128-bit serial number.
func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return n, nil
}
