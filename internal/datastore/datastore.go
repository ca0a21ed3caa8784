// Package datastore is the seam between the node agent and where the
// cluster's shared state lives: the cluster configuration, each node's
// membership (its record and pod subnets) and the watch of the other
// nodes. The etcd implementation (embedded or external) is in
// internal/datastore/etcd, the Kubernetes API one (Node objects) in
// internal/datastore/kubeapi; both implement the same interfaces.
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
	// record. self's subnet fields are ignored. A datastore whose subnets
	// come from elsewhere (Kubernetes: kube-controller-manager) waits for
	// them, telling what it waits for through ReportWait.
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
	// the name and the subnets stay as they are. The membership controller
	// calls it once the node's fabric is set up and whenever what the
	// peers need changes, so a datastore may take it as the fabric being
	// up (Kubernetes: the Node's NetworkUnavailable condition).
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

type waitReporterKey struct{}

// WithWaitReporter returns a context under which a Join that has to wait
// for something outside the agent calls report with what it waits for
// (e.g. "node.spec.podCIDRs"), so that the caller can tell its readiness —
// as net/http/httptrace carries its hooks.
func WithWaitReporter(ctx context.Context, report func(waitingFor string)) context.Context {
	return context.WithValue(ctx, waitReporterKey{}, report)
}

// ReportWait tells ctx's wait reporter, if any, what a Join waits for.
func ReportWait(ctx context.Context, waitingFor string) {
	if report, ok := ctx.Value(waitReporterKey{}).(func(string)); ok {
		report(waitingFor)
	}
}
