package agent

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/cniconf"
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
		{"short lease", func(c *Config) { c.LeaseTTL = time.Second }, "lease TTL"},
		{"bad cluster CIDR", func(c *Config) { c.Cluster.ClusterCIDR = "10.244.0.0/33" }, "10.244.0.0/33"},
		{"unknown backend", func(c *Config) { c.Cluster.Backend = "ipip" }, "ipip"},
		{"node IP not IPv4", func(c *Config) { c.NodeIP = []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1} }, "not IPv4"},
		{"no CNI bin dir", func(c *Config) { c.CNIBinDir = "" }, "CNI bin dir"},
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

// TestInstallPlugins installs twice: the second run changes nothing (same
// inodes), and a changed binary replaces every link atomically.
func TestInstallPlugins(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "podnet-cni")
	if err := os.WriteFile(src, []byte("v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "opt", "cni", "bin")
	names := []string{"podnet", "host-local", "portmap"}
	if err := installPlugins(src, bin, names); err != nil {
		t.Fatal(err)
	}
	inode := func(p string) uint64 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	first := inode(filepath.Join(bin, "podnet"))
	for _, n := range names {
		if inode(filepath.Join(bin, n)) != inode(filepath.Join(bin, "podnet-cni")) {
			t.Errorf("%s is not a link of podnet-cni", n)
		}
	}
	if err := installPlugins(src, bin, names); err != nil {
		t.Fatal(err)
	}
	if inode(filepath.Join(bin, "podnet")) != first {
		t.Error("a second install of the same binary rewrote it")
	}
	if err := os.WriteFile(src, []byte("v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := installPlugins(src, bin, names); err != nil {
		t.Fatal(err)
	}
	for _, n := range append(names, "podnet-cni") {
		b, err := os.ReadFile(filepath.Join(bin, n))
		if err != nil || string(b) != "v2" {
			t.Errorf("%s holds %q (%v) after the upgrade, want v2", n, b, err)
		}
	}
	entries, _ := os.ReadDir(bin)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left in the bin dir", e.Name())
		}
	}
}

func TestWriteAtomic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "net.d", cniconf.FileName)
	for i, tc := range []struct {
		data  string
		wrote bool
	}{{"a", true}, {"a", false}, {"b", true}} {
		wrote, err := writeAtomic(p, []byte(tc.data))
		if err != nil {
			t.Fatal(err)
		}
		if wrote != tc.wrote {
			t.Errorf("write %d: wrote=%v, want %v", i, wrote, tc.wrote)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "b" {
		t.Errorf("file holds %q", b)
	}
}
