// Package fabric is the seam between the node agent and the ways a node can
// reach its peers' pod subnets: the Backend interface, and the Peer and
// Result types every backend speaks. The routed backend (host-gw, VXLAN and
// auto, flannel-style) lives in internal/fabric/routed; a BGP backend goes
// beside it, implementing the same interface.
package fabric

import (
	"context"
	"net"

	"github.com/podnet/podnet/internal/cluster"
)

// Backend programs cross-node pod connectivity into one node's network
// namespace. Everything a backend installs is findable as its own, so
// Reconcile removes what is stale and never touches anyone else's state.
type Backend interface {
	// Setup ensures the node-local part (forwarding, devices, addresses)
	// and returns what the node publishes for its peers. Idempotent.
	Setup() (Local, error)
	// PodMTU is the MTU pods of this node should use.
	PodMTU() (int, error)
	// Reconcile converges the kernel to exactly the given peers; per-peer
	// failures are returned joined, the other peers are still programmed.
	Reconcile(peers []Peer) (Result, error)
	// Subscribe starts watching the kernel state the backend owns and
	// returns once the watch is in place, so a caller that subscribes
	// before its first Reconcile misses no disturbance.
	Subscribe(ctx context.Context) (Watch, error)
	// Teardown removes everything the backend installed.
	Teardown() error
	// Close releases the backend's handles; the kernel state stays.
	Close()
}

// Watch reports disturbances of a backend's kernel state.
type Watch interface {
	// Run calls trigger whenever the backend's kernel state may have been
	// disturbed, until the Subscribe context ends (nil) or the watch fails.
	// trigger should only signal a reconcile loop: the backend's own
	// reconciling raises events too.
	Run(trigger func()) error
}

// Local is what a node publishes in its record for its peers' backends.
type Local struct {
	// VTEPMAC is the MAC of the node's VXLAN device, nil without one.
	VTEPMAC net.HardwareAddr
}

// Peer is another node of the cluster.
type Peer struct {
	Name string
	// IP and IP6 are the peer's underlay addresses.
	IP, IP6 net.IP
	// Subnet and Subnet6 are the peer's pod subnets.
	Subnet, Subnet6 *net.IPNet
	// VTEPMAC is the MAC of the peer's VXLAN device (nil if it has none).
	VTEPMAC net.HardwareAddr
}

// Result tells what a Reconcile did.
type Result struct {
	// Backends is the backend chosen per peer name for its IPv4 subnet (for
	// an IPv6-only peer: for its IPv6 subnet).
	Backends map[string]cluster.Backend
	// Backends6 is the backend chosen per peer name for its IPv6 subnet.
	Backends6 map[string]cluster.Backend
	// Added counts routes, neighbours and FDB entries created, Changed those
	// replaced in place, Removed the stale ones deleted.
	Added, Changed, Removed int
	// DeviceCreated is set when a device had to be (re)created.
	DeviceCreated bool
	// Pending names the peers (once per subnet) that cannot be programmed
	// yet because they have not published what the backend needs (a VTEP
	// MAC): not programmed, and no error.
	Pending []string
}
