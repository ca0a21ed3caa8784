package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCAIsCreatedOnceWithPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("CA certificate cannot sign: %+v", ca.Cert)
	}
	if ca.Cert.Subject.CommonName != "podnet datastore CA" || !ca.Cert.MaxPathLenZero || ca.Cert.MaxPathLen != 0 {
		t.Errorf("datastore CA %v: MaxPathLenZero %v, MaxPathLen %d", ca.Cert.Subject, ca.Cert.MaxPathLenZero, ca.Cert.MaxPathLen)
	}
	if v := ca.Cert.NotAfter.Sub(ca.Cert.NotBefore); v != CAValidity+time.Hour {
		t.Errorf("CA valid for %v", v)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, CAKeyFile): 0o600, filepath.Join(dir, CACertFile): 0o644} {
		if got := mode(t, path); got != want {
			t.Errorf("%s: mode %o, want %o", path, got, want)
		}
	}
	again, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Hash() != ca.Hash() || len(ca.Hash()) != len("sha256:")+64 {
		t.Fatalf("CA not reused: %s then %s", ca.Hash(), again.Hash())
	}
	// A leaf certificate in place of the CA's is refused.
	leafDir := t.TempDir()
	if _, _, err := ca.EnsureClient(leafDir, "n1"); err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(leafDir, ClientCertFile), filepath.Join(leafDir, CACertFile))
	os.Rename(filepath.Join(leafDir, ClientKeyFile), filepath.Join(leafDir, CAKeyFile))
	if _, err := LoadOrCreateCA(leafDir); err == nil {
		t.Fatal("a leaf certificate was loaded as the CA")
	}
}

func TestLoadOrCreateCAWith(t *testing.T) {
	for _, opts := range []CAOptions{
		{Name: "test CA"},
		{Name: "leaf-only CA", LeafOnly: true},
	} {
		t.Run(opts.Name, func(t *testing.T) {
			ca, err := LoadOrCreateCAWith(t.TempDir(), opts)
			if err != nil {
				t.Fatal(err)
			}
			c := ca.Cert
			if c.Subject.CommonName != opts.Name || c.MaxPathLenZero != opts.LeafOnly {
				t.Errorf("CA %v, MaxPathLenZero %v; want %+v", c.Subject, c.MaxPathLenZero, opts)
			}
		})
	}
	if _, err := LoadOrCreateCAWith(t.TempDir(), CAOptions{}); err == nil {
		t.Error("created a CA without a name")
	}
}

// TestEnsureLeaf issues each leaf, checks it, keeps it while it fits and
// reissues it when the leaf asks for another subject, use or name.
func TestEnsureLeaf(t *testing.T) {
	ca, err := LoadOrCreateCAWith(t.TempDir(), CAOptions{Name: "test CA"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "leaves")
	apiserver := Leaf{Name: "apiserver", CommonName: "kube-apiserver", Server: true,
		IPs: []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("fd00::1")}, DNSNames: []string{"kubernetes.default.svc"}}
	node := Leaf{Name: "node", CommonName: "system:node:n1", Organizations: []string{"system:nodes", "extra"}, Client: true}
	peer := Leaf{Name: "peer", CommonName: "peer", Server: true, Client: true, IPs: []net.IP{net.ParseIP("127.0.0.1")}}
	change := func(l Leaf, f func(*Leaf)) Leaf {
		l.Organizations, l.IPs, l.DNSNames = slices.Clone(l.Organizations), slices.Clone(l.IPs), slices.Clone(l.DNSNames)
		f(&l)
		return l
	}
	for _, tc := range []struct {
		name    string
		leaf    Leaf
		usages  []x509.ExtKeyUsage
		hosts   []string
		changes []Leaf
	}{
		{
			name: "server", leaf: apiserver,
			usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			hosts:  []string{"10.0.0.1", "fd00::1", "kubernetes.default.svc"},
			changes: []Leaf{
				change(apiserver, func(l *Leaf) { l.IPs = append(l.IPs, net.ParseIP("10.96.0.1")) }),
				change(apiserver, func(l *Leaf) { l.DNSNames = append(l.DNSNames, "kubernetes") }),
				change(apiserver, func(l *Leaf) { l.Client = true }),
				change(apiserver, func(l *Leaf) { l.CommonName = "other" }),
			},
		},
		{
			name: "client", leaf: node,
			usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			changes: []Leaf{
				change(node, func(l *Leaf) { l.Organizations = append(l.Organizations, "more") }),
				change(node, func(l *Leaf) { l.Organizations = l.Organizations[:1] }),
				change(node, func(l *Leaf) { l.Server = true }),
			},
		},
		{
			name: "server and client", leaf: peer,
			usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			hosts:  []string{"127.0.0.1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certPath, keyPath, err := ca.EnsureLeaf(dir, tc.leaf)
			if err != nil {
				t.Fatal(err)
			}
			if certPath != filepath.Join(dir, tc.leaf.Name+".crt") || keyPath != filepath.Join(dir, tc.leaf.Name+".key") {
				t.Errorf("files %s, %s", certPath, keyPath)
			}
			if mode(t, keyPath) != 0o600 || mode(t, certPath) != 0o644 || mode(t, dir) != 0o700 {
				t.Errorf("modes: key %o, certificate %o, directory %o", mode(t, keyPath), mode(t, certPath), mode(t, dir))
			}
			c, err := ReadCert(certPath)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.ExtKeyUsage, tc.usages) || c.IsCA {
				t.Errorf("usages %v (CA %v), want %v", c.ExtKeyUsage, c.IsCA, tc.usages)
			}
			for _, u := range tc.usages {
				if err := verify(ca, c, u, ""); err != nil {
					t.Errorf("usage %v: %v", u, err)
				}
			}
			for _, h := range tc.hosts {
				if err := verify(ca, c, tc.usages[0], h); err != nil {
					t.Errorf("host %s: %v", h, err)
				}
			}
			if c.Subject.CommonName != tc.leaf.CommonName || !sameSet(c.Subject.Organization, tc.leaf.Organizations) {
				t.Errorf("subject %v, want CN=%s O=%v", c.Subject, tc.leaf.CommonName, tc.leaf.Organizations)
			}
			if v := c.NotAfter.Sub(c.NotBefore); v != LeafValidity+time.Hour {
				t.Errorf("valid for %v", v)
			}
			before := read(t, certPath)
			if _, _, err := ca.EnsureLeaf(dir, tc.leaf); err != nil || !bytes.Equal(read(t, certPath), before) {
				t.Fatalf("a fitting certificate was reissued (%v)", err)
			}
			for _, l := range tc.changes {
				if _, _, err := ca.EnsureLeaf(dir, l); err != nil {
					t.Fatal(err)
				}
				after := read(t, certPath)
				if bytes.Equal(after, before) {
					t.Errorf("certificate kept for %+v", l)
				}
				before = after
			}
		})
	}
}

func TestEnsureLeafRefusesBadLeaves(t *testing.T) {
	ca, err := LoadOrCreateCAWith(t.TempDir(), CAOptions{Name: "test CA"})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []Leaf{
		{CommonName: "x", Client: true},
		{Name: "../x", CommonName: "x", Client: true},
		{Name: "..", CommonName: "x", Client: true},
		{Name: "x", Client: true},
		{Name: "x", CommonName: "x"},
	} {
		dir := t.TempDir()
		if _, _, err := ca.EnsureLeaf(dir, l); err == nil {
			t.Errorf("issued %+v", l)
		}
	}
}

// verify checks c against ca for usage and returns the error.
func verify(ca *CA, c *x509.Certificate, usage x509.ExtKeyUsage, host string) error {
	_, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: host})
	return err
}

func TestEnsureServer(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath, err := ca.EnsureServer(dir, []string{"10.0.0.1", "127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if mode(t, keyPath) != 0o600 {
		t.Errorf("server key mode %o", mode(t, keyPath))
	}
	first := read(t, certPath)
	c, err := ReadCert(certPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host  string
		usage x509.ExtKeyUsage
		ok    bool
	}{
		{"10.0.0.1", x509.ExtKeyUsageServerAuth, true},
		{"127.0.0.1", x509.ExtKeyUsageServerAuth, true},
		{"localhost", x509.ExtKeyUsageServerAuth, true},
		{"", x509.ExtKeyUsageClientAuth, true}, // an etcd member's peer certificate
		{"10.0.0.2", x509.ExtKeyUsageServerAuth, false},
	} {
		if err := verify(ca, c, tc.usage, tc.host); (err == nil) != tc.ok {
			t.Errorf("server certificate for %q usage %v: %v, want ok=%v", tc.host, tc.usage, err, tc.ok)
		}
	}

	// Reused while it fits, reissued for a new host.
	if _, _, err := ca.EnsureServer(dir, []string{"10.0.0.1"}); err != nil || !bytes.Equal(read(t, certPath), first) {
		t.Fatalf("server certificate not reused: %v", err)
	}
	if _, _, err := ca.EnsureServer(dir, []string{"10.0.0.1", "10.0.0.2"}); err != nil || bytes.Equal(read(t, certPath), first) {
		t.Fatalf("server certificate not reissued for a new host: %v", err)
	}
	if c, _ := ReadCert(certPath); verify(ca, c, x509.ExtKeyUsageServerAuth, "10.0.0.2") != nil {
		t.Fatal("reissued server certificate does not cover the new host")
	}
}

func TestEnsureClientReissuesForAnotherCA(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, _, err := other.EnsureClient(dir, "n0"); err != nil {
		t.Fatal(err)
	}
	certPath, _, err := ca.EnsureClient(dir, "n0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ReadCert(certPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Valid(c); err != nil || c.Subject.CommonName != "n0" {
		t.Fatalf("client certificate of another CA kept: %v %s", err, c.Subject.CommonName)
	}
	if verify(ca, c, x509.ExtKeyUsageClientAuth, "") != nil || verify(ca, c, x509.ExtKeyUsageServerAuth, "") == nil {
		t.Fatalf("client certificate usages: %v", c.ExtKeyUsage)
	}
}

func TestSignClientCSR(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, csr, err := NewCSR("admin")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(csr)
	tampered := slices.Clone(blk.Bytes)
	tampered[len(tampered)-3] ^= 0xff // in the signature
	for _, tc := range []struct {
		name string
		csr  []byte
		ok   bool
	}{
		{"valid, CN replaced by the node name", csr, true},
		{"bad signature", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}), false},
		{"a certificate, not a request", ca.PEM, false},
		{"not PEM", []byte("hello"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := ca.SignClientCSR(tc.csr, "n7")
			if !tc.ok {
				if err == nil {
					t.Fatal("signed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := ParseCert(out)
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject.CommonName != "n7" || c.IsCA || !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Fatalf("issued CN %q CA %v usages %v", c.Subject.CommonName, c.IsCA, c.ExtKeyUsage)
			}
			if err := verify(ca, c, x509.ExtKeyUsageClientAuth, ""); err != nil {
				t.Fatal(err)
			}
		})
	}
}
