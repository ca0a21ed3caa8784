package datastore

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestClusterConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    ClusterConfig
		err  string // substring; "" = valid
	}{
		{"v4 defaults", ClusterConfig{ClusterCIDR: "10.244.0.0/16"}, ""},
		{"dual-stack", ClusterConfig{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56"}, ""},
		{"v6 only", ClusterConfig{ClusterCIDR6: "fd00:10:244::/56"}, ""},
		{"v6 /64 cut in /72", ClusterConfig{ClusterCIDR6: "fd00::/64"}, ""},
		{"all set", ClusterConfig{ClusterCIDR: "10.0.0.0/8", SubnetSize: 20, Backend: "vxlan", VNI: 4096, VXLANPort: 8472, MTU: 1450}, ""},
		{"no cidr", ClusterConfig{}, "clusterCIDR or clusterCIDR6 is required"},
		{"bad cidr", ClusterConfig{ClusterCIDR: "10.244.0.0/33"}, "invalid CIDR"},
		{"v6 as v4", ClusterConfig{ClusterCIDR: "fd00::/56"}, "not an IPv4 network"},
		{"v4 as v6", ClusterConfig{ClusterCIDR6: "10.0.0.0/8"}, "not an IPv6 network"},
		{"host bits", ClusterConfig{ClusterCIDR: "10.244.1.0/16"}, "did you mean 10.244.0.0/16"},
		{"subnet not longer", ClusterConfig{ClusterCIDR: "10.244.0.0/24"}, "subnetSize 24: must be longer than the /24"},
		{"subnet too long", ClusterConfig{ClusterCIDR: "10.244.0.0/16", SubnetSize: 31}, "at most 30"},
		{"subnet6 not longer", ClusterConfig{ClusterCIDR6: "fd00::/56", SubnetSize6: 48}, "subnetSize6 48"},
		{"backend", ClusterConfig{ClusterCIDR: "10.244.0.0/16", Backend: "ipip"}, `backend "ipip"`},
		{"vni", ClusterConfig{ClusterCIDR: "10.244.0.0/16", VNI: 1 << 24}, "vni 16777216"},
		{"vni negative", ClusterConfig{ClusterCIDR: "10.244.0.0/16", VNI: -1}, "vni -1"},
		{"port", ClusterConfig{ClusterCIDR: "10.244.0.0/16", VXLANPort: 70000}, "vxlanPort 70000"},
		{"mtu low", ClusterConfig{ClusterCIDR: "10.244.0.0/16", MTU: 500}, "mtu 500"},
		{"mtu v6 low", ClusterConfig{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00::/56", MTU: 1000}, "1280…65535"},
		{"mtu high", ClusterConfig{ClusterCIDR: "10.244.0.0/16", MTU: 70000}, "mtu 70000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.Default()
			err := c.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Validate(%+v) = %v, want nil", c, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Validate(%+v) = %v, want error containing %q", c, err, tc.err)
			}
		})
	}
}

func TestClusterConfigDefault(t *testing.T) {
	for _, tc := range []struct {
		cidr6 string
		want  int
	}{{"fd00::/48", 64}, {"fd00::/56", 64}, {"fd00::/64", 72}, {"fd00::/112", 120}, {"fd00::/118", 120}} {
		c := ClusterConfig{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: tc.cidr6}
		c.Default()
		want := ClusterConfig{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: tc.cidr6, SubnetSize: 24, SubnetSize6: tc.want, Backend: "auto", VNI: 1, VXLANPort: 4789}
		if c != want {
			t.Errorf("Default(%s) = %+v, want %+v", tc.cidr6, c, want)
		}
	}
}

func TestEnsureClusterConfig(t *testing.T) {
	s := newStore(t)
	ctx := testCtx(t)

	if _, _, err := s.EnsureClusterConfig(ctx, ClusterConfig{}); !errors.Is(err, ErrNoClusterConfig) {
		t.Fatalf("zero want on empty store: err = %v, want ErrNoClusterConfig", err)
	}
	if _, _, err := s.EnsureClusterConfig(ctx, ClusterConfig{ClusterCIDR: "10.244.0.0/33"}); err == nil {
		t.Fatal("invalid config was stored")
	}
	first := ClusterConfig{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56", Backend: "vxlan"}
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
		c    ClusterConfig
		diff []string
	}{
		{"zero reads", ClusterConfig{}, nil},
		{"same", first, nil},
		{"subset", ClusterConfig{ClusterCIDR: "10.244.0.0/16"}, nil},
		{"explicit defaults", ClusterConfig{ClusterCIDR: "10.244.0.0/16", SubnetSize: 24, VNI: 1}, nil},
		{"v6 spelled otherwise", ClusterConfig{ClusterCIDR6: "fd00:10:244:0::/56"}, nil},
		{"mismatch", ClusterConfig{ClusterCIDR: "10.0.0.0/8", SubnetSize: 20, Backend: "host-gw", VXLANPort: 8472, MTU: 1400}, []string{
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
		results := make(chan ClusterConfig, 8)
		for i := range 8 {
			go func() {
				c, _, err := s.EnsureClusterConfig(ctx, ClusterConfig{ClusterCIDR: "10.244.0.0/16", VNI: i + 1})
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
