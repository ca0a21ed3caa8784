// Package cluster is podnet's data model of a cluster: the configuration
// every node shares (Config) with its fabric backend (Backend), a node's
// record (Node), and what a node's agent reports it built (NodeStatus).
//
// It holds types and their validation only, no storage: the datastore
// stores them in etcd, the agent and the fabric act on them, and the lab
// and the CLI read them without linking etcd.
package cluster

// Backend is how a node reaches the pod subnets of its peers. Its text
// (JSON, flags) is the constant's value.
type Backend string

// The backends.
const (
	// Auto picks HostGW for a peer whose underlay address is in a subnet
	// connected to the underlay interface (the same link), VXLAN otherwise.
	Auto Backend = "auto"
	// HostGW routes to every peer via its underlay address (an IPv6 pod
	// subnet without IPv6 underlay addresses may ride VXLAN: see
	// internal/fabric).
	HostGW Backend = "host-gw"
	// VXLAN reaches every peer over the VXLAN overlay.
	VXLAN Backend = "vxlan"
)

// Known tells whether b is one of Auto, HostGW and VXLAN.
func (b Backend) Known() bool {
	switch b {
	case Auto, HostGW, VXLAN:
		return true
	}
	return false
}
