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
	// Ready is set while every controller of the agent is ready.
	Ready bool `json:"ready"`
	// Controllers is each controller's readiness, by name.
	Controllers []ControllerStatus `json:"controllers"`
	// Pods counts the pods attached to the cluster network on this node.
	Pods int `json:"pods"`
	// SubnetChanges counts the times the node's membership came back
	// with other subnets than it had (it was lost and another node took
	// them meanwhile).
	SubnetChanges int `json:"subnetChanges"`
	// Joined is when the node got its lease; PeersSince, when the routes
	// to each peer were first in place. Together they time a join.
	Joined     time.Time            `json:"joined"`
	PeersSince map[string]time.Time `json:"peersSince"`
}

// ControllerStatus is the readiness of one of the agent's controllers.
type ControllerStatus struct {
	Name  string `json:"name"`
	Ready bool   `json:"ready"`
	// Reason says why it is not ready.
	Reason string `json:"reason,omitempty"`
	// Restarts counts the times it failed and was restarted.
	Restarts int `json:"restarts"`
}
