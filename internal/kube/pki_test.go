package kube

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/podnet/podnet/internal/pki"
)

// TestCA checks the cluster CA's identity and files; pki's tests cover
// the leaves it issues.
func TestCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := loadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c := ca.Cert; c.Subject.CommonName != "podnet kubernetes CA" || !c.IsCA || c.MaxPathLenZero {
		t.Errorf("CA %v: IsCA %v, MaxPathLenZero %v", c.Subject, c.IsCA, c.MaxPathLenZero)
	}
	assertFileMode(t, dir, 0o700)
	assertFileMode(t, filepath.Join(dir, pki.CAKeyFile), 0o600)
	assertFileMode(t, filepath.Join(dir, pki.CACertFile), 0o644)
	certPath, keyPath, err := ca.EnsureLeaf(dir, pki.Leaf{Name: "admin", CommonName: "admin", Organizations: []string{"system:masters"}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if certPath != filepath.Join(dir, "admin.crt") || keyPath != filepath.Join(dir, "admin.key") {
		t.Errorf("leaf files %s, %s", certPath, keyPath)
	}
	again, err := loadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cert.Equal(ca.Cert) {
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
