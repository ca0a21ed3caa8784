package cluster

import "time"

// NodeStatus is what a node's agent has built, for logs and the lab: the
// agent serves it as JSON at /status, so its JSON field names are an HTTP
// API.
type NodeStatus struct {
	// Node is the node's own record, with its leased subnets.
	Node Node `json:"node"`
	// Cluster is the cluster configuration in use (the stored one).
	Cluster Config `json:"cluster"`
	// MTU is the MTU of the node's pod interfaces.
	MTU int `json:"mtu"`
	// Backends is the backend the node uses to each peer's IPv4 subnet
	// (an IPv6-only peer's IPv6 subnet), by peer name.
	Backends map[string]Backend `json:"backends"`
	// Peers counts the peers the fabric was last reconciled with.
	Peers int `json:"peers"`
	// Ready is set once the lease, the fabric and the CNI configuration
	// are in place.
	Ready bool `json:"ready"`
	// Joined is when the node got its lease; PeersSince, when the routes
	// to each peer were first in place. Together they time a join.
	Joined     time.Time            `json:"joined"`
	PeersSince map[string]time.Time `json:"peersSince"`
}
