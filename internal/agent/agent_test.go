package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/cluster"
)

func TestValidate(t *testing.T) {
	ok := Defaults()
	ok.NodeName = "n1"
	for _, tc := range []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"no node name", func(c *Config) { c.NodeName = "" }, "node name"},
		{"etcd without endpoints", func(c *Config) { c.Datastore = "etcd" }, "--etcd-endpoints"},
		{"unknown datastore", func(c *Config) { c.Datastore = "consul" }, "unknown datastore"},
		{"kubernetes", func(c *Config) { c.Datastore, c.Kubeconfig = "kubernetes", "/etc/podnet/kubeconfig" }, ""},
		{"kubernetes with etcd endpoints", func(c *Config) { c.Datastore, c.EtcdEndpoints = "kubernetes", []string{"https://a:2379"} }, "--etcd-endpoints is for --datastore=etcd"},
		{"kubeconfig without kubernetes", func(c *Config) { c.Kubeconfig = "/etc/podnet/kubeconfig" }, "--kubeconfig is for --datastore=kubernetes"},
		{"join token with kubernetes", func(c *Config) { c.Datastore, c.JoinToken = "kubernetes", "x" }, "a join token is for a client"},
		{"short lease", func(c *Config) { c.LeaseTTL = time.Second }, "lease TTL"},
		{"bad cluster CIDR", func(c *Config) { c.Cluster.ClusterCIDR = "10.244.0.0/33" }, "10.244.0.0/33"},
		{"unknown backend", func(c *Config) { c.Cluster.Backend = "ipip" }, "ipip"},
		{"node IP not IPv4", func(c *Config) { c.NodeIP = []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1} }, "not IPv4"},
		{"no CNI bin dir", func(c *Config) { c.CNIBinDir = "" }, "CNI bin dir"},
		{"service proxy", func(c *Config) { c.Datastore, c.ServiceProxy = "kubernetes", true }, ""},
		{"service proxy without kubernetes", func(c *Config) { c.ServiceProxy = true }, "--service-proxy needs --datastore=kubernetes"},
		{"invalid node-port network", func(c *Config) { c.NodePortAddresses = []netip.Prefix{{}} }, "node-port address network"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.Cluster = ok.Cluster
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

// TestClusterChangeRefused: a node refuses a stored cluster configuration
// that differs from the one it last ran with (a write to the datastore
// must not move it to another cluster CIDR), unless the operator accepts.
func TestClusterChangeRefused(t *testing.T) {
	cfg := Defaults()
	cfg.NodeName, cfg.DataDir, cfg.CNIBinary = "n1", t.TempDir(), "/bin/true"
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	first := cfg.Cluster
	first.Default()
	if err := a.checkClusterChange(first); err != nil {
		t.Fatalf("first start: %v", err)
	}
	if err := a.checkClusterChange(first); err != nil {
		t.Fatalf("restart with the same configuration: %v", err)
	}
	moved := first
	moved.ClusterCIDR, moved.Backend = "10.96.0.0/12", cluster.HostGW
	err = a.checkClusterChange(moved)
	if err == nil || !strings.Contains(err.Error(), `clusterCIDR was "10.244.0.0/16", is now "10.96.0.0/12"`) || !strings.Contains(err.Error(), "backend") {
		t.Fatalf("a moved cluster CIDR: %v", err)
	}
	a.cfg.AcceptClusterChange = true
	if err := a.checkClusterChange(moved); err != nil {
		t.Fatalf("accepted change: %v", err)
	}
	a.cfg.AcceptClusterChange = false
	if err := a.checkClusterChange(moved); err != nil {
		t.Fatalf("after the accepted change, the new configuration is remembered: %v", err)
	}
	if fi, err := os.Stat(a.clusterFile()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("remembered configuration: %v %v", fi, err)
	}
}

// TestServeLeft: after a leave, the agent's address answers /healthz and
// /readyz (the cleanup pod's readiness probe) and nothing else, until its
// context ends.
func TestServeLeft(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := Defaults()
	cfg.NodeName, cfg.Listen, cfg.CNIBinary = "n1", addr, "/nonexistent/podnet-cni"
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.ServeLeft(ctx) }()
	get := func(path string) (int, error) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	deadline := time.Now().Add(5 * time.Second)
	code, err := get("/readyz")
	for err != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		code, err = get("/readyz")
	}
	if err != nil || code != http.StatusOK {
		t.Fatalf("/readyz after the leave: %d, %v; want 200", code, err)
	}
	for path, want := range map[string]int{"/healthz": http.StatusOK, "/metrics": http.StatusNotFound, "/status": http.StatusNotFound} {
		if code, err := get(path); err != nil || code != want {
			t.Errorf("%s: %d, %v; want %d", path, code, err, want)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeLeft: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeLeft did not return once its context ended")
	}
}
