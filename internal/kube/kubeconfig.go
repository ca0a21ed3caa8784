package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/podnet/podnet/internal/atomicfile"
	"github.com/podnet/podnet/internal/pki"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// adminUser is the cluster administrator's user name; it is in
// system:masters.
const adminUser = "kubernetes-admin"

// Kubeconfig returns the path of a kubeconfig file (under Dir/kubeconfigs,
// mode 0600) that authenticates to the API server as user, member of
// groups, with a client certificate of the cluster's CA; the CA, the
// certificate and its key are embedded, so the file can be copied
// elsewhere. The same user asked for again gets the same file, reissued
// only when the groups differ (the last call wins) or the certificate
// nears its end. Examples: ("system:node:n1", "system:nodes") for a
// kubelet, ("system:kube-proxy") for kube-proxy.
func (cp *ControlPlane) Kubeconfig(user string, groups ...string) (string, error) {
	if user == "" {
		return "", errors.New("kube: kubeconfig: empty user name")
	}
	for _, g := range groups {
		if g == "" {
			return "", fmt.Errorf("kube: kubeconfig for %s: empty group name", user)
		}
	}
	cp.pkiMu.Lock()
	defer cp.pkiMu.Unlock()
	ca, err := loadOrCreateCA(cp.pkiDir())
	if err != nil {
		return "", err
	}
	name := fileName(user)
	certPath, keyPath, err := ca.EnsureLeaf(cp.pkiDir(), pki.Leaf{Name: "user-" + name, CommonName: user, Organizations: groups, Client: true})
	if err != nil {
		return "", err
	}
	files := map[string][]byte{}
	for _, p := range []string{certPath, keyPath} {
		if files[p], err = os.ReadFile(p); err != nil {
			return "", fmt.Errorf("kube: kubeconfig for %s: %w", user, err)
		}
	}
	const cluster = "kubernetes"
	cfg := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{cluster: {
			Server:                   cp.server(),
			CertificateAuthorityData: ca.PEM,
		}},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{user: {
			ClientCertificateData: files[certPath],
			ClientKeyData:         files[keyPath],
		}},
		Contexts:       map[string]*clientcmdapi.Context{user: {Cluster: cluster, AuthInfo: user}},
		CurrentContext: user,
	}
	b, err := clientcmd.Write(cfg)
	if err != nil {
		return "", fmt.Errorf("kube: kubeconfig for %s: %w", user, err)
	}
	path := cp.kubeconfigPath(user)
	if _, err := atomicfile.Write(path, b, 0o600); err != nil {
		return "", fmt.Errorf("kube: kubeconfig for %s: %w", user, err)
	}
	return path, nil
}

// AdminKubeconfig is the path of the cluster administrator's kubeconfig
// (a member of system:masters).
func (cp *ControlPlane) AdminKubeconfig() string { return cp.kubeconfigPath(adminUser) }

// CAFile is the path of the cluster CA's certificate: it verifies the API
// server and every client certificate the cluster accepts.
func (cp *ControlPlane) CAFile() string { return filepath.Join(cp.pkiDir(), pki.CACertFile) }

// RESTConfig is a client configuration of the cluster administrator
// whose connections are made inside the control plane's network
// namespace, so it works from any namespace of the machine.
func (cp *ControlPlane) RESTConfig() *rest.Config {
	name := "user-" + fileName(adminUser)
	return &rest.Config{
		Host: cp.server(),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   cp.CAFile(),
			CertFile: filepath.Join(cp.pkiDir(), name+".crt"),
			KeyFile:  filepath.Join(cp.pkiDir(), name+".key"),
		},
		Dial:  cp.dial,
		QPS:   50,
		Burst: 100,
	}
}

// Client is a clientset of the cluster administrator (see RESTConfig).
func (cp *ControlPlane) Client() (kubernetes.Interface, error) {
	c, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}
	return c, nil
}

// kubeconfigPath is where Kubeconfig writes user's file.
func (cp *ControlPlane) kubeconfigPath(user string) string {
	return filepath.Join(cp.cfg.Dir, "kubeconfigs", fileName(user)+".kubeconfig")
}

// fileName makes a file name of a user name: characters other than
// letters, digits, '.', '_' and '-' become '-', and a name so changed
// gets a digest of the original, so that two users never share a file.
func fileName(user string) string {
	safe := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '-'
	}, user)
	if safe == user && user != "." && user != ".." {
		return safe
	}
	sum := sha256.Sum256([]byte(user))
	return safe + "-" + hex.EncodeToString(sum[:4])
}
