package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Backends a cluster can select.
const (
	BackendAuto   = "auto"    // host-gw to peers on the same link, VXLAN to the others
	BackendHostGW = "host-gw" // routes via the peer's underlay address only
	BackendVXLAN  = "vxlan"   // VXLAN to every peer
)

// ErrNoClusterConfig is returned when the datastore holds no cluster config
// and the caller gave none to store.
var ErrNoClusterConfig = errors.New("datastore: no cluster config stored")

// ClusterConfig is the configuration every agent of a cluster shares. The
// first agent stores it; the others read it (EnsureClusterConfig).
type ClusterConfig struct {
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
	Backend string `json:"backend"`
	// VNI is the VXLAN network identifier, 1…16777215, default 1.
	VNI int `json:"vni"`
	// VXLANPort is the VXLAN UDP port, default 4789.
	VXLANPort int `json:"vxlanPort"`
	// MTU of pod interfaces; 0 means the agent derives it from the
	// underlay interface minus the encapsulation overhead.
	MTU int `json:"mtu,omitempty"`
}

// Default fills the zero fields that have a default.
func (c *ClusterConfig) Default() {
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
		c.Backend = BackendAuto
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
func (c ClusterConfig) Validate() error {
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
	switch c.Backend {
	case BackendAuto, BackendHostGW, BackendVXLAN:
	default:
		return fmt.Errorf("cluster config: backend %q: want %s, %s or %s", c.Backend, BackendAuto, BackendHostGW, BackendVXLAN)
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

// EnsureClusterConfig stores want (defaulted and validated) when the
// datastore holds no cluster config yet — an etcd transaction creates the
// key only if absent, so of agents starting at once the first one's config
// wins — and returns the stored config.
//
// A later agent gets the stored config back together with one line per
// field that it set (non-zero in want as given) to a value other than the
// stored one; those differences are not an error (the stored config is the
// cluster's truth) so the agent can log them and go on. A zero want only
// reads: ErrNoClusterConfig when nothing is stored. An invalid want is an
// error even when a config is stored.
func (s *Store) EnsureClusterConfig(ctx context.Context, want ClusterConfig) (ClusterConfig, []string, error) {
	key := s.key(keyConfig)
	if want == (ClusterConfig{}) {
		c, err := s.ClusterConfig(ctx)
		return c, nil, err
	}
	full := want
	full.Default()
	if err := full.Validate(); err != nil {
		return ClusterConfig{}, nil, err
	}
	val, err := json.Marshal(full)
	if err != nil {
		return ClusterConfig{}, nil, fmt.Errorf("datastore: cluster config: %w", err)
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return ClusterConfig{}, nil, fmt.Errorf("datastore: store cluster config: %w", err)
	}
	if resp.Succeeded {
		return full, nil, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return ClusterConfig{}, nil, fmt.Errorf("datastore: cluster config vanished while read")
	}
	stored, err := decodeConfig(kvs[0].Value)
	if err != nil {
		return ClusterConfig{}, nil, err
	}
	return stored, configDiff(stored, want), nil
}

// ClusterConfig reads the stored cluster config; ErrNoClusterConfig when
// there is none.
func (s *Store) ClusterConfig(ctx context.Context) (ClusterConfig, error) {
	resp, err := s.cli.Get(ctx, s.key(keyConfig))
	if err != nil {
		return ClusterConfig{}, fmt.Errorf("datastore: read cluster config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return ClusterConfig{}, ErrNoClusterConfig
	}
	return decodeConfig(resp.Kvs[0].Value)
}

func decodeConfig(b []byte) (ClusterConfig, error) {
	var c ClusterConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return ClusterConfig{}, fmt.Errorf("datastore: stored cluster config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return ClusterConfig{}, fmt.Errorf("datastore: stored %w", err)
	}
	return c, nil
}

// configDiff names the fields set in want that differ from stored.
func configDiff(stored, want ClusterConfig) []string {
	var d []string
	str := func(name, s, w string, canon func(string) string) {
		if w != "" && canon(w) != canon(s) {
			d = append(d, fmt.Sprintf("%s: stored %q, wanted %q", name, s, w))
		}
	}
	num := func(name string, s, w int) {
		if w != 0 && w != s {
			d = append(d, fmt.Sprintf("%s: stored %d, wanted %d", name, s, w))
		}
	}
	str("clusterCIDR", stored.ClusterCIDR, want.ClusterCIDR, canonCIDR)
	str("clusterCIDR6", stored.ClusterCIDR6, want.ClusterCIDR6, canonCIDR)
	num("subnetSize", stored.SubnetSize, want.SubnetSize)
	num("subnetSize6", stored.SubnetSize6, want.SubnetSize6)
	str("backend", stored.Backend, want.Backend, func(s string) string { return s })
	num("vni", stored.VNI, want.VNI)
	num("vxlanPort", stored.VXLANPort, want.VXLANPort)
	num("mtu", stored.MTU, want.MTU)
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
