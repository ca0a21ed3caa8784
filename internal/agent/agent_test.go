package agent

import (
	"strings"
	"testing"
	"time"
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
