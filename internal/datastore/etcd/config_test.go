package etcd

import (
	"errors"
	"slices"
	"testing"

	"github.com/podnet/podnet/internal/cluster"
)

func TestEnsureClusterConfig(t *testing.T) {
	s := newStore(t)
	ctx := testCtx(t)

	if _, _, err := s.EnsureClusterConfig(ctx, cluster.Config{}); !errors.Is(err, ErrNoClusterConfig) {
		t.Fatalf("zero want on empty store: err = %v, want ErrNoClusterConfig", err)
	}
	if _, _, err := s.EnsureClusterConfig(ctx, cluster.Config{ClusterCIDR: "10.244.0.0/33"}); err == nil {
		t.Fatal("invalid config was stored")
	}
	first := cluster.Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56", Backend: cluster.VXLAN}
	got, diff, err := s.EnsureClusterConfig(ctx, first)
	if err != nil || diff != nil {
		t.Fatalf("first: %v %v", diff, err)
	}
	want := first
	want.Default()
	if got != want {
		t.Fatalf("first: got %+v, want %+v", got, want)
	}

	for _, tc := range []struct {
		name string
		c    cluster.Config
		diff []string
	}{
		{"zero reads", cluster.Config{}, nil},
		{"same", first, nil},
		{"subset", cluster.Config{ClusterCIDR: "10.244.0.0/16"}, nil},
		{"explicit defaults", cluster.Config{ClusterCIDR: "10.244.0.0/16", SubnetSize: 24, VNI: 1}, nil},
		{"v6 spelled otherwise", cluster.Config{ClusterCIDR6: "fd00:10:244:0::/56"}, nil},
		{"mismatch", cluster.Config{ClusterCIDR: "10.0.0.0/8", SubnetSize: 20, Backend: cluster.HostGW, VXLANPort: 8472, MTU: 1400}, []string{
			`clusterCIDR: stored "10.244.0.0/16", wanted "10.0.0.0/8"`,
			"subnetSize: stored 24, wanted 20",
			`backend: stored "vxlan", wanted "host-gw"`,
			"vxlanPort: stored 4789, wanted 8472",
			"mtu: stored 0, wanted 1400",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, diff, err := s.EnsureClusterConfig(ctx, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("got %+v, want the stored %+v", got, want)
			}
			if !slices.Equal(diff, tc.diff) {
				t.Fatalf("diff = %q, want %q", diff, tc.diff)
			}
		})
	}

	// Agents racing to create: exactly one config wins, all see it.
	t.Run("race", func(t *testing.T) {
		s := newStore(t)
		results := make(chan cluster.Config, 8)
		for i := range 8 {
			go func() {
				c, _, err := s.EnsureClusterConfig(ctx, cluster.Config{ClusterCIDR: "10.244.0.0/16", VNI: i + 1})
				if err != nil {
					t.Error(err)
				}
				results <- c
			}()
		}
		var vni int
		for range 8 {
			c := <-results
			if vni == 0 {
				vni = c.VNI
			}
			if c.VNI != vni {
				t.Fatalf("racing agents saw different configs: vni %d and %d", vni, c.VNI)
			}
		}
	})
}
