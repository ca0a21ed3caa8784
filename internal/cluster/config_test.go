package cluster

import (
	"net"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		err  string // substring; "" = valid
	}{
		{"v4 defaults", Config{ClusterCIDR: "10.244.0.0/16"}, ""},
		{"dual-stack", Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56"}, ""},
		{"v6 only", Config{ClusterCIDR6: "fd00:10:244::/56"}, ""},
		{"v6 /64 cut in /72", Config{ClusterCIDR6: "fd00::/64"}, ""},
		{"all set", Config{ClusterCIDR: "10.0.0.0/8", SubnetSize: 20, Backend: VXLAN, VNI: 4096, VXLANPort: 8472, MTU: 1450}, ""},
		{"no cidr", Config{}, "clusterCIDR or clusterCIDR6 is required"},
		{"bad cidr", Config{ClusterCIDR: "10.244.0.0/33"}, "invalid CIDR"},
		{"v6 as v4", Config{ClusterCIDR: "fd00::/56"}, "not an IPv4 network"},
		{"v4 as v6", Config{ClusterCIDR6: "10.0.0.0/8"}, "not an IPv6 network"},
		{"host bits", Config{ClusterCIDR: "10.244.1.0/16"}, "did you mean 10.244.0.0/16"},
		{"subnet not longer", Config{ClusterCIDR: "10.244.0.0/24"}, "subnetSize 24: must be longer than the /24"},
		{"subnet too long", Config{ClusterCIDR: "10.244.0.0/16", SubnetSize: 31}, "at most 30"},
		{"subnet6 not longer", Config{ClusterCIDR6: "fd00::/56", SubnetSize6: 48}, "subnetSize6 48"},
		{"backend", Config{ClusterCIDR: "10.244.0.0/16", Backend: "ipip"}, `backend "ipip"`},
		{"vni", Config{ClusterCIDR: "10.244.0.0/16", VNI: 1 << 24}, "vni 16777216"},
		{"vni negative", Config{ClusterCIDR: "10.244.0.0/16", VNI: -1}, "vni -1"},
		{"port", Config{ClusterCIDR: "10.244.0.0/16", VXLANPort: 70000}, "vxlanPort 70000"},
		{"mtu low", Config{ClusterCIDR: "10.244.0.0/16", MTU: 500}, "mtu 500"},
		{"mtu v6 low", Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00::/56", MTU: 1000}, "1280…65535"},
		{"mtu high", Config{ClusterCIDR: "10.244.0.0/16", MTU: 70000}, "mtu 70000"},
		{"everything", Config{ClusterCIDR: "0.0.0.0/0", SubnetSize: 8}, "covers every address"},
		{"everything v6", Config{ClusterCIDR6: "::/0", SubnetSize6: 64}, "covers every address"},
		{"loopback", Config{ClusterCIDR: "127.0.0.0/16"}, "overlaps the reserved 127.0.0.0/8"},
		{"around loopback", Config{ClusterCIDR: "96.0.0.0/3", SubnetSize: 24}, "overlaps the reserved 127.0.0.0/8"},
		{"link-local", Config{ClusterCIDR: "169.254.0.0/16"}, "169.254.0.0/16"},
		{"multicast", Config{ClusterCIDR: "239.1.0.0/16"}, "224.0.0.0/4"},
		{"v6 link-local", Config{ClusterCIDR6: "fe80::/56"}, "fe80::/10"},
		{"v6 multicast", Config{ClusterCIDR6: "ff05::/56"}, "ff00::/8"},
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

func TestConfigDefault(t *testing.T) {
	for _, tc := range []struct {
		cidr6 string
		want  int
	}{{"fd00::/48", 64}, {"fd00::/56", 64}, {"fd00::/64", 72}, {"fd00::/112", 120}, {"fd00::/118", 120}} {
		c := Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: tc.cidr6}
		c.Default()
		want := Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: tc.cidr6, SubnetSize: 24, SubnetSize6: tc.want, Backend: Auto, VNI: 1, VXLANPort: 4789}
		if c != want {
			t.Errorf("Default(%s) = %+v, want %+v", tc.cidr6, c, want)
		}
	}
}

func TestCheckUnderlay(t *testing.T) {
	c := Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56"}
	nets := func(ss ...string) []*net.IPNet {
		var out []*net.IPNet
		for _, s := range ss {
			_, n, _ := net.ParseCIDR(s)
			out = append(out, n)
		}
		return out
	}
	for _, tc := range []struct {
		nets []*net.IPNet
		err  string
	}{
		{nets("192.0.2.0/24", "2001:db8::/64"), ""},
		{nets("10.244.3.0/24"), "overlaps the node's underlay network 10.244.3.0/24"},
		{nets("10.0.0.0/8"), "overlaps the node's underlay network 10.0.0.0/8"},
		{nets("fd00:10:244:1::/64"), "fd00:10:244:1::/64"},
	} {
		err := c.CheckUnderlay(tc.nets)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("CheckUnderlay(%v) = %v, want %q", tc.nets, err, tc.err)
		}
	}
}
