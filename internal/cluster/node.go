package cluster

import (
	"encoding/json"
	"fmt"
	"net"
)

// Node is one node's record, as every agent sees it.
type Node struct {
	// Name is the node's name, unique in the cluster.
	Name string `json:"name"`
	// IP is the node's underlay IPv4 address.
	IP net.IP `json:"ip,omitempty"`
	// IP6 is the node's underlay IPv6 address, optional.
	IP6 net.IP `json:"ip6,omitempty"`
	// Subnet is the node's leased IPv4 pod subnet (nil in an IPv6-only
	// cluster); JSON as CIDR text.
	Subnet *net.IPNet `json:"subnet,omitempty"`
	// Subnet6 is the node's leased IPv6 pod subnet (dual-stack or
	// IPv6-only); JSON as CIDR text.
	Subnet6 *net.IPNet `json:"subnet6,omitempty"`
	// VTEPMAC is the MAC address of the node's VXLAN device.
	VTEPMAC string `json:"vtepMAC,omitempty"`
}

type nodeJSON struct {
	Name    string `json:"name"`
	IP      net.IP `json:"ip,omitempty"`
	IP6     net.IP `json:"ip6,omitempty"`
	Subnet  string `json:"subnet,omitempty"`
	Subnet6 string `json:"subnet6,omitempty"`
	VTEPMAC string `json:"vtepMAC,omitempty"`
}

// MarshalJSON writes the subnets as CIDR text.
func (n Node) MarshalJSON() ([]byte, error) {
	j := nodeJSON{Name: n.Name, IP: n.IP, IP6: n.IP6, VTEPMAC: n.VTEPMAC}
	if n.Subnet != nil {
		j.Subnet = n.Subnet.String()
	}
	if n.Subnet6 != nil {
		j.Subnet6 = n.Subnet6.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the subnets from CIDR text.
func (n *Node) UnmarshalJSON(b []byte) error {
	var j nodeJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*n = Node{Name: j.Name, IP: j.IP, IP6: j.IP6, VTEPMAC: j.VTEPMAC}
	var err error
	if n.Subnet, err = parseSubnet(j.Subnet); err != nil {
		return fmt.Errorf("node %s: subnet: %w", j.Name, err)
	}
	if n.Subnet6, err = parseSubnet(j.Subnet6); err != nil {
		return fmt.Errorf("node %s: subnet6: %w", j.Name, err)
	}
	return nil
}

func parseSubnet(s string) (*net.IPNet, error) {
	if s == "" {
		return nil, nil
	}
	_, n, err := net.ParseCIDR(s)
	return n, err
}
