package cluster

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Config is the configuration every agent of a cluster shares. The first
// agent stores it in the datastore; the others read it.
type Config struct {
	// ClusterCIDR is the IPv4 pod network, e.g. 10.244.0.0/16. It may be
	// empty only when ClusterCIDR6 is set (IPv6-only cluster).
	ClusterCIDR string `json:"clusterCIDR"`
	// ClusterCIDR6 is the IPv6 pod network for dual-stack (or IPv6-only),
	// e.g. fd00:10:244::/56.
	ClusterCIDR6 string `json:"clusterCIDR6,omitempty"`
	// SubnetSize is the prefix length of a node's IPv4 subnet, default 24.
	SubnetSize int `json:"subnetSize"`
	// SubnetSize6 is the prefix length of a node's IPv6 subnet: default 64
	// when ClusterCIDR6 is shorter than /64, else its prefix length + 8
	// (at most 120).
	SubnetSize6 int `json:"subnetSize6,omitempty"`
	// Backend is auto, host-gw or vxlan, default auto.
	Backend Backend `json:"backend"`
	// VNI is the VXLAN network identifier, 1…16777215, default 1.
	VNI int `json:"vni"`
	// VXLANPort is the VXLAN UDP port, default 4789.
	VXLANPort int `json:"vxlanPort"`
	// MTU of pod interfaces; 0 means the agent derives it from the
	// underlay interface minus the encapsulation overhead.
	MTU int `json:"mtu,omitempty"`
}

// Default fills the zero fields that have a default.
func (c *Config) Default() {
	if c.SubnetSize == 0 && c.ClusterCIDR != "" {
		c.SubnetSize = 24
	}
	if c.SubnetSize6 == 0 && c.ClusterCIDR6 != "" {
		if _, n, err := net.ParseCIDR(c.ClusterCIDR6); err == nil {
			ones, _ := n.Mask.Size()
			switch {
			case ones < 64:
				c.SubnetSize6 = 64
			case ones+8 <= 120:
				c.SubnetSize6 = ones + 8
			default:
				c.SubnetSize6 = 120
			}
		}
	}
	if c.Backend == "" {
		c.Backend = Auto
	}
	if c.VNI == 0 {
		c.VNI = 1
	}
	if c.VXLANPort == 0 {
		c.VXLANPort = 4789
	}
}

// Validate checks a defaulted config: CIDRs of the right family given as
// network addresses, node subnets longer than their CIDR and short enough
// to hold pods, a known backend, VNI, port and MTU in range.
func (c Config) Validate() error {
	if c.ClusterCIDR == "" && c.ClusterCIDR6 == "" {
		return errors.New("cluster config: clusterCIDR or clusterCIDR6 is required")
	}
	if c.ClusterCIDR != "" {
		if err := validateFamily("clusterCIDR", c.ClusterCIDR, false, "subnetSize", c.SubnetSize, 30); err != nil {
			return err
		}
	}
	if c.ClusterCIDR6 != "" {
		if err := validateFamily("clusterCIDR6", c.ClusterCIDR6, true, "subnetSize6", c.SubnetSize6, 126); err != nil {
			return err
		}
	}
	if err := c.checkReserved(); err != nil {
		return err
	}
	if !c.Backend.Known() {
		return fmt.Errorf("cluster config: backend %q: want %s, %s or %s", c.Backend, Auto, HostGW, VXLAN)
	}
	if c.VNI < 1 || c.VNI > 1<<24-1 {
		return fmt.Errorf("cluster config: vni %d: want 1…%d", c.VNI, 1<<24-1)
	}
	if c.VXLANPort < 1 || c.VXLANPort > 65535 {
		return fmt.Errorf("cluster config: vxlanPort %d: want 1…65535", c.VXLANPort)
	}
	minMTU := 576
	if c.ClusterCIDR6 != "" {
		minMTU = 1280 // IPv6 minimum link MTU
	}
	if c.MTU != 0 && (c.MTU < minMTU || c.MTU > 65535) {
		return fmt.Errorf("cluster config: mtu %d: want 0 (auto) or %d…65535", c.MTU, minMTU)
	}
	return nil
}

func validateFamily(field, cidr string, v6 bool, sizeField string, size, maxSize int) error {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return fmt.Errorf("cluster config: %s: %w", field, err)
	}
	if isV6 := strings.Contains(cidr, ":"); isV6 != v6 {
		want := "IPv4"
		if v6 {
			want = "IPv6"
		}
		return fmt.Errorf("cluster config: %s %s is not an %s network", field, cidr, want)
	}
	if !ip.Equal(n.IP) {
		return fmt.Errorf("cluster config: %s %s is not a network address (did you mean %s?)", field, cidr, n)
	}
	ones, _ := n.Mask.Size()
	if size <= ones || size > maxSize {
		return fmt.Errorf("cluster config: %s %d: must be longer than the /%d of %s %s and at most %d", sizeField, size, ones, field, cidr, maxSize)
	}
	return nil
}

// reserved are the networks a cluster CIDR must not overlap: routing pods
// there would hijack the node's own loopback, link-local or multicast
// traffic (and a /0 every route).
var reserved = func() []*net.IPNet {
	var out []*net.IPNet
	for _, s := range []string{"127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "::1/128", "fe80::/10", "ff00::/8"} {
		_, n, _ := net.ParseCIDR(s)
		out = append(out, n)
	}
	return out
}()

// checkReserved refuses cluster CIDRs that cover everything or overlap a
// reserved network.
func (c Config) checkReserved() error {
	for _, f := range []struct{ field, cidr string }{{"clusterCIDR", c.ClusterCIDR}, {"clusterCIDR6", c.ClusterCIDR6}} {
		if f.cidr == "" {
			continue
		}
		_, n, err := net.ParseCIDR(f.cidr)
		if err != nil {
			return fmt.Errorf("cluster config: %s: %w", f.field, err)
		}
		if ones, _ := n.Mask.Size(); ones == 0 {
			return fmt.Errorf("cluster config: %s %s covers every address", f.field, f.cidr)
		}
		for _, r := range reserved {
			if Overlaps(n, r) {
				return fmt.Errorf("cluster config: %s %s overlaps the reserved %s", f.field, f.cidr, r)
			}
		}
	}
	return nil
}

// CIDRs are the cluster's pod networks, IPv4 first.
func (c Config) CIDRs() []*net.IPNet {
	var out []*net.IPNet
	for _, s := range []string{c.ClusterCIDR, c.ClusterCIDR6} {
		if _, n, err := net.ParseCIDR(s); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// CheckUnderlay refuses a cluster whose pod networks overlap networks the
// node is attached to (nets: its underlay's): the node would route its own
// neighbours into pods.
func (c Config) CheckUnderlay(nets []*net.IPNet) error {
	for _, cidr := range c.CIDRs() {
		for _, u := range nets {
			if Overlaps(cidr, u) {
				return fmt.Errorf("cluster CIDR %s overlaps the node's underlay network %s: choose a cluster CIDR apart from the nodes' networks", cidr, u)
			}
		}
	}
	return nil
}

// Overlaps tells whether two networks share an address.
func Overlaps(a, b *net.IPNet) bool {
	return a != nil && b != nil && (a.Contains(b.IP) || b.Contains(a.IP))
}

// FieldDiff is one field in which two configurations differ, both values
// as text (CIDRs canonical, strings quoted).
type FieldDiff struct {
	Field string
	A, B  string
}

// Diff lists the fields in which b differs from c, in field order; with
// onlySet, only the fields b sets (non-zero) count.
func (c Config) Diff(b Config, onlySet bool) []FieldDiff {
	var d []FieldDiff
	str := func(name, x, y string, canon func(string) string) {
		if (y != "" || !onlySet) && canon(x) != canon(y) {
			d = append(d, FieldDiff{name, fmt.Sprintf("%q", x), fmt.Sprintf("%q", y)})
		}
	}
	num := func(name string, x, y int) {
		if (y != 0 || !onlySet) && x != y {
			d = append(d, FieldDiff{name, fmt.Sprint(x), fmt.Sprint(y)})
		}
	}
	same := func(s string) string { return s }
	str("clusterCIDR", c.ClusterCIDR, b.ClusterCIDR, canonCIDR)
	str("clusterCIDR6", c.ClusterCIDR6, b.ClusterCIDR6, canonCIDR)
	num("subnetSize", c.SubnetSize, b.SubnetSize)
	num("subnetSize6", c.SubnetSize6, b.SubnetSize6)
	str("backend", string(c.Backend), string(b.Backend), same)
	num("vni", c.VNI, b.VNI)
	num("vxlanPort", c.VXLANPort, b.VXLANPort)
	num("mtu", c.MTU, b.MTU)
	return d
}

// canonCIDR is the canonical text of a CIDR (IPv6 zeros compressed), or s
// when it does not parse.
func canonCIDR(s string) string {
	if _, n, err := net.ParseCIDR(s); err == nil {
		return n.String()
	}
	return s
}
