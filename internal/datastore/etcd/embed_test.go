package etcd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/cluster"
)

func TestEmbeddedServerAndExternalClient(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etcd")
	ec := testEmbed(t, dir, "http")
	a, err := Open(testCtx(t), Config{Embed: ec})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { a.Close() }()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v %v, want mode 0700", fi.Mode(), err)
	}

	// A second agent, client of the first one's server.
	b, err := Open(testCtx(t), Config{Endpoints: []string{ec.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	withConfig(t, b, v4Config)
	lb := acquire(t, b, "b", cluster.Node{}, time.Minute)
	la := acquire(t, a, "a", cluster.Node{}, time.Minute)
	nodes, err := a.Nodes(testCtx(t))
	if err != nil || len(nodes) != 2 || nodes[1].Subnet.String() != "10.244.0.0/24" || nodes[0].Subnet.String() != "10.244.1.0/24" {
		t.Fatalf("nodes seen by the embedding agent: %+v %v", nodes, err)
	}
	if got := lb.Node(); got.Name != "b" || !got.IP.Equal(net.ParseIP("192.0.2.1")) {
		t.Fatalf("b's record: %+v", got)
	}

	// The same ports again: a clear error.
	_, err = Open(testCtx(t), Config{EtcdLogLevel: "fatal", Embed: &EmbedConfig{Name: "x", DataDir: t.TempDir(), ClientURL: ec.ClientURL, PeerURL: ec.PeerURL}})
	if err == nil || !strings.Contains(err.Error(), "port in use") {
		t.Fatalf("second server on the same ports: %v", err)
	}

	// Bad configurations fail before anything starts.
	for _, bad := range []Config{
		{},
		{Endpoints: []string{ec.ClientURL}, Embed: ec},
		{Embed: &EmbedConfig{Name: "x", DataDir: t.TempDir(), ClientURL: "127.0.0.1:1", PeerURL: ec.PeerURL}},
		{Embed: &EmbedConfig{Name: "x", DataDir: t.TempDir(), ClientURL: "https://127.0.0.1:1", PeerURL: ec.PeerURL}},
		{Endpoints: []string{ec.ClientURL}, EtcdLogLevel: "loud"},
	} {
		if s, err := Open(testCtx(t), bad); err == nil {
			s.Close()
			t.Fatalf("Open(%+v) succeeded", bad)
		}
	}

	// The server restarts from its data dir: config, records and leases
	// survive (a lease's TTL restarts with the server).
	b.Close()
	a.Close()
	a, err = Open(testCtx(t), Config{Embed: ec})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := a.ClusterConfig(testCtx(t)); err != nil || c.ClusterCIDR != v4Config.ClusterCIDR {
		t.Fatalf("config after restart: %+v %v", c, err)
	}
	if nodes, err := a.Nodes(testCtx(t)); err != nil || len(nodes) != 2 || a.recordLease(t, nodes[0].Name) != la.ID() {
		t.Fatalf("nodes after restart: %+v %v", nodes, err)
	}

	// Nothing listens any more once closed.
	a.Close()
	if _, err := Open(testCtx(t), Config{Endpoints: []string{ec.ClientURL}, DialTimeout: 500 * time.Millisecond}); err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("client of a stopped server: %v", err)
	}
}

// writePEM writes a certificate signed by parent (self-signed when parent is
// nil) and its key into dir as name.crt and name.key.
func writePEM(t *testing.T, dir, name string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestTLS(t *testing.T) {
	pki := t.TempDir()
	now := time.Now()
	cert := func(serial int64, cn string, ca bool, usage x509.ExtKeyUsage) *x509.Certificate {
		c := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		if ca {
			c.IsCA, c.BasicConstraintsValid = true, true
			c.KeyUsage |= x509.KeyUsageCertSign
			c.ExtKeyUsage = nil
		}
		return c
	}
	caCert, caKey := writePEM(t, pki, "ca", cert(1, "podnet test CA", true, 0), nil, nil)
	writePEM(t, pki, "server", cert(2, "etcd", false, x509.ExtKeyUsageServerAuth), caCert, caKey)
	writePEM(t, pki, "client", cert(3, "agent", false, x509.ExtKeyUsageClientAuth), caCert, caKey)
	writePEM(t, pki, "other-ca", cert(4, "another CA", true, 0), nil, nil)
	f := func(n string) string { return filepath.Join(pki, n) }

	ec := testEmbed(t, t.TempDir(), "https")
	ec.CertFile, ec.KeyFile, ec.ClientCAFile = f("server.crt"), f("server.key"), f("ca.crt")
	tlsClient := Config{CAFile: f("ca.crt"), CertFile: f("client.crt"), KeyFile: f("client.key")}

	srvCfg := tlsClient
	srvCfg.Embed = ec
	a, err := Open(testCtx(t), srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	withConfig(t, a, v4Config)

	ext := tlsClient
	ext.Endpoints = []string{ec.ClientURL}
	b, err := Open(testCtx(t), ext)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := acquire(t, b, "b", cluster.Node{}, time.Minute).Node().Subnet.String(); got != "10.244.0.0/24" {
		t.Fatalf("over TLS b got %s", got)
	}

	for name, bad := range map[string]Config{
		"no client cert": {CAFile: f("ca.crt")},
		"wrong CA":       {CAFile: f("other-ca.crt"), CertFile: f("client.crt"), KeyFile: f("client.key")},
		"plain":          {},
	} {
		bad.Endpoints, bad.DialTimeout = []string{ec.ClientURL}, 500*time.Millisecond
		if name == "plain" {
			bad.Endpoints = []string{strings.Replace(ec.ClientURL, "https", "http", 1)}
		}
		if s, err := Open(testCtx(t), bad); err == nil {
			s.Close()
			t.Fatalf("%s: client connected", name)
		}
	}
	if _, err := Open(testCtx(t), Config{Endpoints: ext.Endpoints, CAFile: f("missing.crt")}); err == nil || !strings.Contains(err.Error(), "client TLS") {
		t.Fatalf("missing CA file: %v", err)
	}
}
