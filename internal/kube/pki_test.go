package kube

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/podnet/podnet/internal/pki"
)

func TestAuthorityIssues(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := loadOrCreateAuthority(dir)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	for _, tc := range []struct {
		leaf  leaf
		usage x509.ExtKeyUsage
		hosts []string
	}{
		{
			leaf:  leaf{name: "apiserver", cn: "kube-apiserver", server: true, ips: []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("10.96.0.1")}, dns: []string{"kubernetes.default.svc"}},
			usage: x509.ExtKeyUsageServerAuth,
			hosts: []string{"10.0.0.1", "10.96.0.1", "kubernetes.default.svc"},
		},
		{
			leaf:  leaf{name: "admin", cn: "admin", orgs: []string{"system:masters"}},
			usage: x509.ExtKeyUsageClientAuth,
		},
		{
			leaf:  leaf{name: "node", cn: "system:node:n1", orgs: []string{"system:nodes", "extra"}},
			usage: x509.ExtKeyUsageClientAuth,
		},
	} {
		t.Run(tc.leaf.name, func(t *testing.T) {
			certPath, keyPath, err := ca.ensure(tc.leaf)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := pki.ReadCert(certPath)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
				t.Errorf("verify: %v", err)
			}
			if cert.Subject.CommonName != tc.leaf.cn || !sameSet(cert.Subject.Organization, tc.leaf.orgs) {
				t.Errorf("subject %v, want CN=%s O=%v", cert.Subject, tc.leaf.cn, tc.leaf.orgs)
			}
			for _, h := range tc.hosts {
				if err := cert.VerifyHostname(h); err != nil {
					t.Errorf("host %s: %v", h, err)
				}
			}
			assertFileMode(t, keyPath, 0o600)
			before, _ := os.ReadFile(certPath)
			if _, _, err := ca.ensure(tc.leaf); err != nil {
				t.Fatal(err)
			}
			if after, _ := os.ReadFile(certPath); !bytes.Equal(before, after) {
				t.Error("a fitting certificate was reissued")
			}
			changed := tc.leaf
			changed.orgs = append(slices.Clone(changed.orgs), "more")
			if _, _, err := ca.ensure(changed); err != nil {
				t.Fatal(err)
			}
			if after, _ := os.ReadFile(certPath); bytes.Equal(before, after) {
				t.Error("a certificate for other groups was kept")
			}
		})
	}
	assertFileMode(t, ca.keyFile(), 0o600)
	again, err := loadOrCreateAuthority(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.cert.Equal(ca.cert) {
		t.Error("the CA was not reloaded")
	}
}

func TestServiceAccountKey(t *testing.T) {
	dir := t.TempDir()
	keyPath, pubPath, err := ensureServiceAccountKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	assertFileMode(t, keyPath, 0o600)
	b, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM public key")
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if blk, _ = pem.Decode(kb); blk == nil {
		t.Fatal("no PEM private key")
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !key.(*ecdsa.PrivateKey).Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Error("sa.pub is not the public half of sa.key")
	}
	before, _ := os.ReadFile(keyPath)
	if _, _, err := ensureServiceAccountKey(dir); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(keyPath); !bytes.Equal(before, after) {
		t.Error("the service-account key was replaced")
	}
}

func assertFileMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != want {
		t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
	}
}
