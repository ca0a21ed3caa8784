package etcd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/pki"
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

// testPKI is a cluster CA in dir with a server certificate for loopback
// and a client certificate; it returns the file of each.
func testPKI(t *testing.T, dir string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	c, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	serverCert, serverKey, err = c.EnsureServer(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, err = c.EnsureClient(dir, "agent")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, pki.CACertFile), serverCert, serverKey, clientCert, clientKey
}

func TestTLS(t *testing.T) {
	ca, srvCert, srvKey, cliCert, cliKey := testPKI(t, t.TempDir())
	otherCA, _, _, otherCert, otherKey := testPKI(t, t.TempDir())

	ec := testEmbed(t, t.TempDir(), "https")
	ec.PeerURL = strings.Replace(ec.PeerURL, "http:", "https:", 1)
	ec.CertFile, ec.KeyFile, ec.ClientCAFile = srvCert, srvKey, ca
	tlsClient := Config{CAFile: ca, CertFile: cliCert, KeyFile: cliKey}

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
		"no client cert":                    {CAFile: ca},
		"client cert of another CA":         {CAFile: ca, CertFile: otherCert, KeyFile: otherKey},
		"server checked against another CA": {CAFile: otherCA, CertFile: cliCert, KeyFile: cliKey},
		"plain":                             {},
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
	if _, err := Open(testCtx(t), Config{Endpoints: ext.Endpoints, CAFile: filepath.Join(t.TempDir(), "missing.crt")}); err == nil || !strings.Contains(err.Error(), "client TLS") {
		t.Fatalf("missing CA file: %v", err)
	}

	// The peer listener, too, wants a certificate of the CA.
	peer := strings.TrimPrefix(ec.PeerURL, "https://")
	for name, certs := range map[string][]tls.Certificate{"none": nil, "another CA's": {loadPair(t, otherCert, otherKey)}} {
		conn, err := tls.Dial("tcp", peer, &tls.Config{RootCAs: caPool(t, ca), Certificates: certs})
		if err == nil {
			// TLS 1.3: the server checks the client's certificate after
			// the client's handshake ends; the refusal comes on reading,
			// an accepted connection just waits for a request.
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("peer listener with %s client certificate: accepted (%v)", name, err)
		}
	}
	if _, err := Open(testCtx(t), Config{Embed: &EmbedConfig{Name: "x", DataDir: t.TempDir(), ClientURL: ec.ClientURL, PeerURL: ec.PeerURL, CertFile: srvCert, KeyFile: srvKey}}); err == nil || !strings.Contains(err.Error(), "PeerURL") {
		t.Fatalf("https peer URL without a CA: %v", err)
	}
}

func loadPair(t *testing.T, cert, key string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func caPool(t *testing.T, caFile string) *x509.CertPool {
	t.Helper()
	c, err := pki.ReadCert(caFile)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}
