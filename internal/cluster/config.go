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
