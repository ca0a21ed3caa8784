package kube

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/podnet/podnet/internal/pki"
)

// Files of the PKI directory besides the CA's (pki.CACertFile,
// pki.CAKeyFile) and the leaves' (name.crt, name.key).
const (
	saKeyFile = "sa.key" // service-account token signing key
	saPubFile = "sa.pub" // its public half, which verifies tokens
)

// loadOrCreateCA loads the cluster's certificate authority kept in dir,
// creating dir and the CA when there is none; its leaves (ca.EnsureLeaf)
// are kept in dir too.
func loadOrCreateCA(dir string) (*pki.CA, error) {
	ca, err := pki.LoadOrCreateCAWith(dir, pki.CAOptions{Name: "podnet kubernetes CA"})
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	return ca, nil
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
	key, err := pki.NewKey()
	if err != nil {
		return "", "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", fmt.Errorf("kube: service-account key: %w", err)
	}
	if err := pki.WriteKey(keyPath, key); err != nil {
		return "", "", err
	}
	if err := pki.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return "", "", err
	}
	return keyPath, pubPath, nil
}
