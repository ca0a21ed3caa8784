package kube

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/podnet/podnet/internal/pki"
)

// Validity of the cluster's certificates. A leaf found on disk is
// reissued when less than leafRenewBefore of it remains.
const (
	caValidity      = 10 * 365 * 24 * time.Hour
	leafValidity    = 365 * 24 * time.Hour
	leafRenewBefore = 30 * 24 * time.Hour
)

// Files of the PKI directory.
const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
	saKeyFile  = "sa.key" // service-account token signing key
	saPubFile  = "sa.pub" // its public half, which verifies tokens
)

// authority is the cluster's certificate authority, kept in a directory
// with the certificates it issued. Keys are ECDSA P-256, private keys
// are written 0600, every file atomically.
type authority struct {
	dir  string
	cert *x509.Certificate
	key  crypto.Signer
}

// leaf describes a certificate the authority issues.
type leaf struct {
	// name is the file name, without extension, of the certificate
	// (name.crt) and its key (name.key).
	name string
	// cn and orgs are the subject: for a client, the user and its
	// groups.
	cn   string
	orgs []string
	// server: a serving certificate for ips and dns; else a client one.
	server bool
	ips    []net.IP
	dns    []string
}

// loadOrCreateAuthority loads the CA kept in dir, creating dir and the CA
// when there is none.
func loadOrCreateAuthority(dir string) (*authority, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	cert, key, err := loadPair(certPath, keyPath)
	switch {
	case err == nil:
		if !cert.IsCA {
			return nil, fmt.Errorf("kube pki: %s is not a CA certificate", certPath)
		}
		return &authority{dir: dir, cert: cert, key: key}, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("kube pki: %w", err)
	}
	key, err = newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "podnet kubernetes CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("kube pki: create CA: %w", err)
	}
	// The key first: a CA certificate without its key is useless.
	if err := writeKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := pki.WriteFile(certPath, encodeCert(der), 0o644); err != nil {
		return nil, err
	}
	if cert, err = x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("kube pki: %w", err)
	}
	return &authority{dir: dir, cert: cert, key: key}, nil
}

// certFile is the path of the CA certificate.
func (a *authority) certFile() string { return filepath.Join(a.dir, caCertFile) }

// keyFile is the path of the CA's private key.
func (a *authority) keyFile() string { return filepath.Join(a.dir, caKeyFile) }

// ensure makes sure the directory holds l's certificate and key, issued
// by the CA, fitting l and valid for a while yet; else it issues them
// anew.
func (a *authority) ensure(l leaf) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(a.dir, l.name+".crt"), filepath.Join(a.dir, l.name+".key")
	cert, _, err := loadPair(certPath, keyPath)
	if err == nil && a.fits(cert, l) {
		return certPath, keyPath, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", "", err
	}
	key, err := newKey()
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: l.cn, Organization: l.orgs},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if l.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses, tmpl.DNSNames = l.ips, l.dns
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return "", "", err
	}
	now := time.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(leafValidity)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return "", "", fmt.Errorf("kube pki: issue %q: %w", l.cn, err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return "", "", err
	}
	if err := pki.WriteFile(certPath, encodeCert(der), 0o644); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// fits tells whether c is a certificate of the CA for l, valid for
// leafRenewBefore still.
func (a *authority) fits(c *x509.Certificate, l leaf) bool {
	if c.CheckSignatureFrom(a.cert) != nil || time.Until(c.NotAfter) < leafRenewBefore {
		return false
	}
	if c.Subject.CommonName != l.cn || !sameSet(c.Subject.Organization, l.orgs) {
		return false
	}
	if !l.server {
		return slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return false
	}
	for _, ip := range l.ips {
		if c.VerifyHostname(ip.String()) != nil {
			return false
		}
	}
	for _, name := range l.dns {
		if c.VerifyHostname(name) != nil {
			return false
		}
	}
	return true
}

// sameSet tells whether a and b hold the same strings, in any order (DER
// sorts a subject's organizations).
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// ensureServiceAccountKey makes sure dir holds the key pair that signs
// and verifies service-account tokens, creating it when missing.
func ensureServiceAccountKey(dir string) (keyPath, pubPath string, err error) {
	keyPath, pubPath = filepath.Join(dir, saKeyFile), filepath.Join(dir, saPubFile)
	_, kerr := os.Stat(keyPath)
	_, perr := os.Stat(pubPath)
	if kerr == nil && perr == nil {
		return keyPath, pubPath, nil
	}
	key, err := newKey()
	if err != nil {
		return "", "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", fmt.Errorf("kube pki: service-account key: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return "", "", err
	}
	if err := pki.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return "", "", err
	}
	return keyPath, pubPath, nil
}

// loadPair reads a PEM certificate and its PEM (PKCS #8) private key;
// the error wraps fs.ErrNotExist when either file is missing.
func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := pki.ReadCert(certPath)
	if err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("kube pki: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, nil, fmt.Errorf("kube pki: %s: no PEM key", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("kube pki: %s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("kube pki: %s: not a signing key", keyPath)
	}
	return cert, signer, nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("kube pki: key: %w", err)
	}
	return k, nil
}

// writeKey writes k, PKCS #8 in PEM, to path with mode 0600.
func writeKey(path string, k crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return fmt.Errorf("kube pki: key: %w", err)
	}
	return pki.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// serial is a random 128-bit serial number.
func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("kube pki: serial: %w", err)
	}
	return n, nil
}
