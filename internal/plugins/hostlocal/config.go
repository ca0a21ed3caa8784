package hostlocal

import (
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/ipam"
)

// Conf is a network configuration as host-local reads it.
type Conf struct {
	cniplugin.NetConf
	IPAM          *IPAMConf `json:"ipam"`
	RuntimeConfig struct {
		IPs      []string        `json:"ips,omitempty"`
		IPRanges []ipam.RangeSet `json:"ipRanges,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args,omitempty"`
}

// IPAMConf is the "ipam" object: the reference host-local's fields.
type IPAMConf struct {
	Type       string          `json:"type"`
	Ranges     []ipam.RangeSet `json:"ranges"`
	Routes     []*types.Route  `json:"routes"`
	DataDir    string          `json:"dataDir"`
	ResolvConf string          `json:"resolvConf"`
	// The legacy single range, written inline.
	Subnet     string `json:"subnet"`
	RangeStart net.IP `json:"rangeStart"`
	RangeEnd   net.IP `json:"rangeEnd"`
	Gateway    net.IP `json:"gateway"`

	// requested holds the addresses asked for through CNI_ARGS IP=,
	// args.cni.ips and the ips capability.
	requested []net.IP
}

// decode reads the configuration without validating the ranges: DEL and GC
// need no more than the network name and the data dir.
func decode(data []byte) (*Conf, error) {
	c := &Conf{}
	if err := cniplugin.Decode(data, c); err != nil {
		return nil, err
	}
	if c.IPAM == nil {
		return nil, cniplugin.Invalid("IPAM config missing 'ipam' key")
	}
	return c, nil
}

// load reads and validates the configuration and the requested addresses,
// with the reference's precedence and defaults.
func load(data []byte, envArgs string) (*Conf, error) {
	c, err := decode(data)
	if err != nil {
		return nil, err
	}
	n := c.IPAM
	args, err := cniplugin.ParseArgs(envArgs)
	if err != nil {
		return nil, err
	}
	reqs := append([]string(nil), args.IP...)
	if c.Args != nil && c.Args.CNI != nil {
		reqs = append(reqs, c.Args.CNI.IPs...)
	}
	reqs = append(reqs, c.RuntimeConfig.IPs...)
	for _, s := range reqs {
		ip := parseIP(s)
		if ip == nil {
			return nil, cniplugin.Invalid("cannot understand requested ip %q", s)
		}
		n.requested = append(n.requested, ip)
	}

	if n.Subnet != "" {
		legacy, err := legacyRange(n)
		if err != nil {
			return nil, err
		}
		n.Ranges = append([]ipam.RangeSet{{legacy}}, n.Ranges...)
	}
	if len(c.RuntimeConfig.IPRanges) > 0 {
		n.Ranges = append(c.RuntimeConfig.IPRanges, n.Ranges...)
	}
	if len(n.Ranges) == 0 {
		return nil, cniplugin.Invalid("no IP ranges specified")
	}
	v4, v6 := 0, 0
	for i := range n.Ranges {
		if err := n.Ranges[i].Canonicalize(); err != nil {
			return nil, cniplugin.Invalid("invalid range set %d: %v", i, err)
		}
		if n.Ranges[i].IsV4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		if ok, _ := version.GreaterThanOrEqualTo(c.CNIVersion, "0.3.0"); !ok {
			return nil, cniplugin.Invalid("CNI version %v does not support more than 1 address per family", c.CNIVersion)
		}
	}
	for i := range n.Ranges {
		for j := i + 1; j < len(n.Ranges); j++ {
			if n.Ranges[i].Overlaps(n.Ranges[j]) {
				return nil, cniplugin.Invalid("range set %d overlaps with %d", i, j)
			}
		}
	}
	for _, r := range n.Routes {
		if r == nil || r.Dst.IP == nil {
			return nil, cniplugin.Invalid("route without dst")
		}
	}
	return c, nil
}

func legacyRange(n *IPAMConf) (ipam.Range, error) {
	ip, sub, err := net.ParseCIDR(n.Subnet)
	if err != nil {
		return ipam.Range{}, cniplugin.Invalid("invalid subnet %q: %v", n.Subnet, err)
	}
	return ipam.Range{Subnet: net.IPNet{IP: ip, Mask: sub.Mask}, RangeStart: n.RangeStart, RangeEnd: n.RangeEnd, Gateway: n.Gateway}, nil
}

// parseIP reads an address with or without a prefix length.
func parseIP(s string) net.IP {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '/'); i >= 0 {
		ip, _, err := net.ParseCIDR(s)
		if err != nil {
			return nil
		}
		s = ip.String()
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return nil
	}
	c, _ := ipam.Canonical(ip)
	return c
}
