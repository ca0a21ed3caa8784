package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/datastore/etcd"
	"github.com/podnet/podnet/internal/join"
	"github.com/podnet/podnet/internal/pki"
)

func TestValidateDatastoreSecurity(t *testing.T) {
	token := "pn1:" + strings.Repeat("ab", 32) + "::sha256:" + strings.Repeat("01", 32)
	embedded := Defaults()
	embedded.NodeName = "n1"
	client := embedded
	client.Datastore, client.EtcdEndpoints = "etcd", []string{"https://10.0.0.1:2379"}
	for _, tc := range []struct {
		name    string
		base    Config
		mutate  func(*Config)
		wantErr string
	}{
		{"embedded defaults (https)", embedded, func(*Config) {}, ""},
		{"embedded plaintext on loopback", embedded, func(c *Config) {
			c.EtcdClientURL, c.EtcdPeerURL = "http://127.0.0.1:2379", "http://[::1]:2380"
		}, ""},
		{"embedded plaintext on localhost", embedded, func(c *Config) { c.EtcdClientURL = "http://localhost:2379" }, ""},
		{"embedded plaintext client URL", embedded, func(c *Config) { c.EtcdClientURL = "http://10.0.0.1:2379" }, "http://10.0.0.1:2379 is plaintext"},
		{"embedded plaintext peer URL", embedded, func(c *Config) { c.EtcdPeerURL = "http://10.0.0.1:2380" }, "http://10.0.0.1:2380 is plaintext"},
		{"embedded plaintext, told it is insecure", embedded, func(c *Config) {
			c.EtcdClientURL, c.InsecureDatastore = "http://10.0.0.1:2379", true
		}, ""},
		{"https endpoint", client, func(*Config) {}, ""},
		{"plaintext endpoint", client, func(c *Config) { c.EtcdEndpoints = []string{"https://10.0.0.1:2379", "http://10.0.0.2:2379"} }, "http://10.0.0.2:2379 is plaintext"},
		{"plaintext endpoint by name", client, func(c *Config) { c.EtcdEndpoints = []string{"http://etcd.example:2379"} }, "is plaintext"},
		{"endpoint without scheme nor TLS", client, func(c *Config) { c.EtcdEndpoints = []string{"10.0.0.1:2379"} }, "10.0.0.1:2379 is plaintext"},
		{"endpoint without scheme, TLS files", client, func(c *Config) {
			c.EtcdEndpoints, c.EtcdCAFile = []string{"10.0.0.1:2379"}, "/ca.crt"
		}, ""},
		{"plaintext endpoint on loopback", client, func(c *Config) { c.EtcdEndpoints = []string{"http://127.0.0.1:2379"} }, ""},
		{"plaintext endpoint, told it is insecure", client, func(c *Config) {
			c.EtcdEndpoints, c.InsecureDatastore = []string{"http://10.0.0.1:2379"}, true
		}, ""},
		{"join token", client, func(c *Config) { c.JoinToken = token }, ""},
		{"join token file", client, func(c *Config) { c.JoinTokenFile = "/t" }, ""},
		{"malformed join token", client, func(c *Config) { c.JoinToken = "secret" }, "not a podnet join token"},
		{"token and token file", client, func(c *Config) { c.JoinToken, c.JoinTokenFile = token, "/t" }, "exclusive"},
		{"token and certificate", client, func(c *Config) { c.JoinToken, c.EtcdCertFile = token, "/c" }, "exclusive"},
		{"token for the embedding agent", embedded, func(c *Config) { c.JoinToken = token }, "--datastore=etcd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.base
			c.EtcdEndpoints = append([]string(nil), tc.base.EtcdEndpoints...)
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate = %v, want an error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestEmbeddedURLs(t *testing.T) {
	ul := controller.Underlay{IP: net.IPv4(10, 0, 0, 1)}
	for _, tc := range []struct {
		client, peer         string
		wantClient, wantPeer string
	}{
		{"", "", "https://10.0.0.1:2379", "https://127.0.0.1:2380"},
		{"https://10.0.0.1:12379", "", "https://10.0.0.1:12379", "https://127.0.0.1:2380"},
		{"http://127.0.0.1:2379", "", "http://127.0.0.1:2379", "http://127.0.0.1:2380"},
		{"", "https://127.0.0.1:12380", "https://10.0.0.1:2379", "https://127.0.0.1:12380"},
	} {
		c := Config{EtcdClientURL: tc.client, EtcdPeerURL: tc.peer}
		if client, peer := c.embeddedURLs(ul); client != tc.wantClient || peer != tc.wantPeer {
			t.Errorf("embeddedURLs(%q, %q) = %q, %q; want %q, %q", tc.client, tc.peer, client, peer, tc.wantClient, tc.wantPeer)
		}
	}
}

// storeAgent is an agent configured for the datastore only, its data in a
// fresh directory.
func storeAgent(t *testing.T, name string, mutate func(*Config)) *Agent {
	t.Helper()
	c := Defaults()
	c.NodeName, c.DataDir = name, filepath.Join(t.TempDir(), "data")
	mutate(&c)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &Agent{cfg: c, log: slog.New(slog.DiscardHandler)}
}

var loopback = controller.Underlay{IP: net.IPv4(127, 0, 0, 1)}

func openCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestSecuredDatastore runs an embedding agent with its defaults (on
// loopback) and clients of it: its PKI and token are made on first start
// and reused on restart, a client with the token joins, one with a wrong
// token or none does not.
func TestSecuredDatastore(t *testing.T) {
	clientURL := fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	peerURL := fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	joinAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	first := storeAgent(t, "n0", func(c *Config) {
		c.EtcdClientURL, c.EtcdPeerURL, c.JoinListen = clientURL, peerURL, joinAddr
	})
	s, err := first.openStore(openCtx(t), loopback, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	if _, _, err := s.EnsureClusterConfig(openCtx(t), first.cfg.Cluster); err != nil {
		t.Fatal(err)
	}
	dir := first.cfg.DataDir
	for _, f := range []string{filepath.Join(pkiDir, pki.CAKeyFile), filepath.Join(pkiDir, pki.ServerKeyFile), filepath.Join(pkiDir, pki.ClientKeyFile), joinTokenFile} {
		if m := fileMode(t, filepath.Join(dir, f)); m != 0o600 {
			t.Errorf("%s: mode %o, want 0600", f, m)
		}
	}
	tokenPath := filepath.Join(dir, joinTokenFile)
	tok, err := join.ReadToken(tokenPath)
	if err != nil {
		t.Fatal(err)
	}

	// Restarted, the agent keeps its CA and token.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = first.openStore(openCtx(t), loopback, prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	if again, err := join.ReadToken(tokenPath); err != nil || again != tok {
		t.Fatalf("token after restart: %v (changed: %v)", err, again != tok)
	}

	wrong := tok
	wrong.Secret = strings.Repeat("00", 32)
	for _, tc := range []struct {
		name, node string
		mutate     func(*Config)
		wantErr    string
	}{
		{"the token's file", "n1", func(c *Config) { c.JoinTokenFile = tokenPath }, ""},
		{"the token", "n1", func(c *Config) { c.JoinToken = tok.String() }, ""},
		{"a wrong token", "n1", func(c *Config) { c.JoinToken = wrong.String() }, "token was refused"},
		{"no token", "n1", func(*Config) {}, "not reachable"},
		{"the token, as the embedding node", "n0", func(c *Config) { c.JoinToken = tok.String() }, "cannot join"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := storeAgent(t, tc.node, func(c *Config) {
				c.Datastore, c.EtcdEndpoints, c.JoinURL = "etcd", []string{clientURL}, "https://"+joinAddr
				tc.mutate(c)
			})
			cs, err := a.openStore(openCtx(t), loopback, prometheus.NewRegistry())
			if tc.wantErr != "" {
				if err == nil {
					cs.Close()
				}
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("openStore = %v, want an error about %q", err, tc.wantErr)
				}
				if _, err := os.Stat(filepath.Join(a.cfg.DataDir, pkiDir, pki.ClientCertFile)); err == nil {
					t.Fatal("a refused node has a client certificate")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			c, err := pki.ReadCert(filepath.Join(a.cfg.DataDir, pkiDir, pki.ClientCertFile))
			if err != nil || c.Subject.CommonName != "n1" {
				t.Fatalf("joined node's certificate: %v %v", c, err)
			}
			if _, _, err := cs.EnsureClusterConfig(openCtx(t), a.cfg.Cluster); err != nil {
				t.Fatalf("joined node cannot use the datastore: %v", err)
			}
			// Its etcd role confines it to its own record (and its claims).
			cli := cs.(*etcd.Store).Client()
			for _, key := range []string{"/podnet/nodes/n1", "/podnet/nodes/n0", "/podnet/config"} {
				_, err := cli.Put(openCtx(t), key, "{}")
				if own := key == "/podnet/nodes/n1"; (err == nil) != own {
					t.Errorf("joined node n1 writes %s: %v", key, err)
				}
			}
		})
	}
}
