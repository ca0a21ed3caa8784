// Package pki provides certificate authorities kept in a directory with
// the certificates they issue. Foremost it is the CA of a podnet cluster's
// datastore: the embedding agent creates the CA on first start and issues
// from it the embedded etcd server's certificate (serving clients and its
// peer), its own client certificate and, through the join endpoint, the
// client certificates of the nodes that join. The Kubernetes clusters of
// tests and the lab (internal/kube) keep their CA with it too. Keys are
// ECDSA P-256; every file is written atomically, private keys with mode
// 0600. Only the standard library's crypto is used.
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

// File names under a PKI directory: the CA's, and those of the
// datastore's server and client certificates (leaves named serverLeaf and
// clientLeaf).
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = serverLeaf + certExt
	ServerKeyFile  = serverLeaf + keyExt
	ClientCertFile = clientLeaf + certExt
	ClientKeyFile  = clientLeaf + keyExt
)

const (
	serverLeaf = "server"
	clientLeaf = "client"
	certExt    = ".crt"
	keyExt     = ".key"
)

// The datastore CA's common name and the group of its nodes' client
// certificates.
const (
	datastoreCAName = "podnet datastore CA"
	nodesGroup      = "podnet:nodes"
)

// CA is the cluster's certificate authority.
type CA struct {
	// Cert is the CA certificate, PEM its encoding.
	Cert *x509.Certificate
	PEM  []byte
	key  crypto.Signer
}

// CAOptions describe the CA LoadOrCreateCAWith creates.
type CAOptions struct {
	// Name is the common name of the CA certificate.
	Name string
	// LeafOnly constrains the CA to issuing leaf certificates, no
	// intermediate CAs (a path length of zero).
	LeafOnly bool
}

// LoadOrCreateCA loads the datastore's CA from dir (ca.crt, ca.key), or
// creates it there, with dir, when there is none: a CA named "podnet
// datastore CA" that issues leaf certificates only.
func LoadOrCreateCA(dir string) (*CA, error) {
	return LoadOrCreateCAWith(dir, CAOptions{Name: datastoreCAName, LeafOnly: true})
}

// LoadOrCreateCAWith loads the CA from dir (ca.crt, ca.key), or creates
// it there as opts say, with dir (0700), when there is none. A CA found in
// dir is kept whatever its name and constraints.
func LoadOrCreateCAWith(dir string, opts CAOptions) (*CA, error) {
	if opts.Name == "" {
		return nil, errors.New("pki: CA without a name")
	}
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
	key, err = NewKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: opts.Name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        opts.LeafOnly,
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA: %w", err)
	}
	// The key first: a certificate without its key is not a CA.
	if err := WriteKey(keyPath, key); err != nil {
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

// Leaf describes a leaf certificate the CA issues.
type Leaf struct {
	// Name names the files of the certificate (Name.crt) and its private
	// key (Name.key).
	Name string
	// CommonName and Organizations are the subject: for a client, its
	// user name and groups.
	CommonName    string
	Organizations []string
	// Server and Client are the uses of the certificate: authenticating
	// a server (valid for IPs and DNSNames) and a client. One at least.
	Server, Client bool
	IPs            []net.IP
	DNSNames       []string
}

// EnsureLeaf makes sure dir holds l's certificate and key, issued by the
// CA, fitting l and valid for RenewBefore still; else it issues them anew
// with a new key (dir is created, 0700, when missing). A certificate fits
// when it has l's subject (organizations in any order), l's uses and
// names among its own.
func (ca *CA) EnsureLeaf(dir string, l Leaf) (certPath, keyPath string, err error) {
	tmpl, err := l.template()
	if err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(dir, l.Name+certExt), filepath.Join(dir, l.Name+keyExt)
	cert, _, err := loadPair(certPath, keyPath)
	if err == nil && ca.Valid(cert) == nil && l.fits(cert) {
		return certPath, keyPath, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("pki: %w", err)
	}
	key, err := NewKey()
	if err != nil {
		return "", "", err
	}
	der, err := ca.sign(tmpl, key.Public())
	if err != nil {
		return "", "", err
	}
	if err := WriteKey(keyPath, key); err != nil {
		return "", "", err
	}
	if err := WriteFile(certPath, encodeCert(der), 0o644); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// template is the certificate template of l.
func (l Leaf) template() (*x509.Certificate, error) {
	if l.Name == "" || l.Name != filepath.Base(l.Name) || l.Name == "." || l.Name == ".." {
		return nil, fmt.Errorf("pki: leaf %q: not a file name", l.Name)
	}
	if l.CommonName == "" {
		return nil, fmt.Errorf("pki: leaf %q: empty common name", l.Name)
	}
	var usages []x509.ExtKeyUsage
	if l.Server {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if l.Client {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
	}
	if len(usages) == 0 {
		return nil, fmt.Errorf("pki: leaf %q: for neither server nor client authentication", l.Name)
	}
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: l.CommonName, Organization: l.Organizations},
		ExtKeyUsage: usages,
		IPAddresses: l.IPs,
		DNSNames:    l.DNSNames,
	}, nil
}

// fits tells whether c has l's subject, uses and names.
func (l Leaf) fits(c *x509.Certificate) bool {
	if c.Subject.CommonName != l.CommonName || !sameSet(c.Subject.Organization, l.Organizations) {
		return false
	}
	if l.Server && !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) ||
		l.Client && !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return false
	}
	for _, ip := range l.IPs {
		if c.VerifyHostname(ip.String()) != nil {
			return false
		}
	}
	for _, name := range l.DNSNames {
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

// EnsureServer makes sure dir holds the datastore's server certificate
// (server.crt, server.key) valid for every host (IP addresses or DNS
// names), as EnsureLeaf does. It is good for client and server
// authentication, as an etcd member's peer certificate must be.
func (ca *CA) EnsureServer(dir string, hosts []string) (certPath, keyPath string, err error) {
	l := Leaf{Name: serverLeaf, CommonName: "podnet datastore server", Server: true, Client: true}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			l.IPs = append(l.IPs, ip)
		} else {
			l.DNSNames = append(l.DNSNames, h)
		}
	}
	return ca.EnsureLeaf(dir, l)
}

// EnsureClient makes sure dir holds a datastore client certificate for
// name (client.crt, client.key), as EnsureLeaf does.
func (ca *CA) EnsureClient(dir, name string) (certPath, keyPath string, err error) {
	return ca.EnsureLeaf(dir, nodeClient(name))
}

// nodeClient is the datastore client certificate of the node name.
func nodeClient(name string) Leaf {
	return Leaf{Name: clientLeaf, CommonName: name, Organizations: []string{nodesGroup}, Client: true}
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
	tmpl, err := nodeClient(name).template()
	if err != nil {
		return nil, err
	}
	der, err := ca.sign(tmpl, csr.PublicKey)
	if err != nil {
		return nil, err
	}
	return encodeCert(der), nil
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
	key, err := NewKey()
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

// NewKey generates a private key: ECDSA P-256.
func NewKey() (*ecdsa.PrivateKey, error) {
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

// WriteKey writes k, PKCS #8 in PEM, to path atomically with mode 0600.
func WriteKey(path string, k crypto.Signer) error {
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
