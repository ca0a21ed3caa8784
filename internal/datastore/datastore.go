// Package datastore is the seam between the node agent and where the
// cluster's shared state lives: the cluster configuration, each node's
// membership (its record and pod subnets) and the watch of the other
// nodes. The etcd implementation (embedded or external) is in
// internal/datastore/etcd; a Kubernetes API implementation goes beside it,
// implementing the same interfaces, without a change to the agent's
// controllers.
package datastore

import (
	"context"

	"github.com/podnet/podnet/internal/cluster"
)

// Store is a connection to the cluster's shared state.
type Store interface {
	// EnsureClusterConfig stores want (defaulted and validated) when no
	// cluster configuration is stored yet, of agents starting at once the
	// first one winning, and returns the stored configuration with one
	// line per field that want sets to another value than the stored one.
	EnsureClusterConfig(ctx context.Context, want cluster.Config) (cluster.Config, []string, error)
	// Join makes self a member of the cluster: it obtains the node's pod
	// subnets — the ones it already holds, else prefer's (its last ones,
	// from local state) when free, else free ones — and publishes its
	// record. self's subnet fields are ignored.
	Join(ctx context.Context, self, prefer cluster.Node) (Membership, error)
	// WatchNodes calls f with the complete set of node records, sorted by
	// name, at start and after every change, until ctx ends (then it
	// returns nil). f runs on WatchNodes' goroutine.
	WatchNodes(ctx context.Context, f func([]cluster.Node)) error
	// Close closes the connection (and an embedded server).
	Close() error
}

// Membership is a node's hold on its record and pod subnets.
type Membership interface {
	// Node is the node's record as last written.
	Node() cluster.Node
	// Update rewrites the node's record (underlay addresses, VTEP MAC);
	// the name and the subnets stay as they are.
	Update(ctx context.Context, n cluster.Node) error
	// Run keeps the membership alive until ctx ends, then returns nil.
	// When the membership was lost and taken again, it calls changed with
	// the record before and after: the subnets differ when another node
	// took them meanwhile, and everything that depends on them must follow.
	Run(ctx context.Context, changed func(old, cur cluster.Node)) error
	// Healthy is nil while the datastore has confirmed the membership
	// recently enough (within its grace period); else it says why not.
	Healthy() error
	// Release gives the node's subnets back and removes its record, so
	// every other node drops its routes at once.
	Release(ctx context.Context) error
}
